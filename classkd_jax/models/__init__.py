"""Flax decoder-only transformers (GPT-2, Llama, Mistral, Qwen2, Qwen3, SmolLM3,
Gemma 2, Gemma 3) with Hugging Face I/O.

Public API (the model contract shared by the other modules):
  ModelConfig, Transformer, ModelOutput, KVCache, init_cache, init_params,
  abstract_params, lm_head, softcap, unstack_layers, stack_layers, load_hf,
  save_hf, load_tokenizer, get_preset.

Logits are `softcap(hidden @ lm_head, config.final_logit_softcap)`: code that
forms them from hidden states itself (chunked losses, samplers) applies it.
"""

from classkd_jax.models.cache import KVCache, init_cache
from classkd_jax.models.config import ModelConfig
from classkd_jax.models.hf_io import load_hf, load_tokenizer, save_hf
from classkd_jax.models.layers import softcap
from classkd_jax.models.presets import PRESETS, get_preset
from classkd_jax.models.transformer import (
    ModelOutput,
    Transformer,
    abstract_params,
    init_params,
    lm_head,
    repeat_kv_heads,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "Transformer",
    "abstract_params",
    "get_preset",
    "init_cache",
    "init_params",
    "lm_head",
    "load_hf",
    "repeat_kv_heads",
    "load_tokenizer",
    "save_hf",
    "softcap",
    "stack_layers",
    "unstack_layers",
]
