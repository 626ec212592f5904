"""Shapes of the real checkpoints users distill, plus tiny test models.

Shapes only (weights come from checkpoints via `load_hf`); numbers copied from
each model's published config.json.
"""

from __future__ import annotations

import dataclasses

from classkd_jax.models.config import ModelConfig

_LLAMA3_ROPE = (
    ("factor", 32.0),
    ("high_freq_factor", 4.0),
    ("low_freq_factor", 1.0),
    ("original_max_position_embeddings", 8192),
    ("rope_type", "llama3"),
)


def _gpt2(d: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(
        family="gpt2",
        vocab_size=50257,
        hidden_size=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d // heads,
        intermediate_size=4 * d,
        max_position_embeddings=1024,
        position_embedding="learned",
        norm="layernorm",
        norm_eps=1e-5,
        mlp="gelu",
        activation="gelu_new",
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )


def _qwen2(vocab, d, layers, heads, kv, ffn, max_pos, tied) -> ModelConfig:
    return ModelConfig(
        family="qwen2",
        vocab_size=vocab,
        hidden_size=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=d // heads,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        qkv_bias=True,
        tie_word_embeddings=tied,
        bos_token_id=151643,
        eos_token_id=151643,
    )


def _llama32(d, layers, heads, head_dim) -> ModelConfig:
    return ModelConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=8,
        head_dim=head_dim,
        intermediate_size=8192,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE,
        norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def _tiny(family: str) -> ModelConfig:
    """2-layer, width-32 models with a 256-token vocabulary (ids 0/1/2 = pad/bos/eos)."""
    base = {"gpt2": PRESETS["gpt2"], "qwen2": PRESETS["qwen2.5-0.5b"]}.get(
        family, PRESETS["llama-3.2-1b"]
    )()
    fields = dataclasses.asdict(base)
    fields.update(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, head_dim=8)
    fields.update(intermediate_size=64, max_position_embeddings=128)
    fields.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    fields["num_kv_heads"] = 4 if family == "gpt2" else 2
    if family == "llama":
        # Untied, like the larger Llamas, so the tiny models cover both head kinds.
        fields.update(rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False)
    return ModelConfig(**fields)


PRESETS = {
    "gpt2": lambda: _gpt2(768, 12, 12),
    "gpt2-medium": lambda: _gpt2(1024, 24, 16),
    "gpt2-large": lambda: _gpt2(1280, 36, 20),
    "gpt2-xl": lambda: _gpt2(1600, 48, 25),
    "qwen2.5-0.5b": lambda: _qwen2(151936, 896, 24, 14, 2, 4864, 32768, True),
    "qwen2.5-1.5b": lambda: _qwen2(151936, 1536, 28, 12, 2, 8960, 131072, True),
    "qwen2.5-7b": lambda: _qwen2(152064, 3584, 28, 28, 4, 18944, 131072, False),
    "llama-3.2-1b": lambda: _llama32(2048, 16, 32, 64),
    "llama-3.2-3b": lambda: _llama32(3072, 28, 24, 128),
    "tiny-gpt2": lambda: _tiny("gpt2"),
    "tiny-llama": lambda: _tiny("llama"),
    "tiny-qwen2": lambda: _tiny("qwen2"),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """Returns the `ModelConfig` of a named preset, with `overrides` applied.

    Args:
      name: one of `PRESETS` (case-insensitive), e.g. 'gpt2', 'qwen2.5-0.5b',
        'llama-3.2-1b', 'tiny-llama'.
      **overrides: fields to replace, e.g. `dtype='bfloat16', remat=True`.
    """
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    config = PRESETS[key]()
    return config.replace(**overrides) if overrides else config
