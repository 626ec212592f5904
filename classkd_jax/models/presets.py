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


def _llama31_8b() -> ModelConfig:
    return dataclasses.replace(
        _llama32(4096, 32, 32, 128),
        intermediate_size=14336,
        rope_scaling=tuple((k, 8.0 if k == "factor" else v) for k, v in _LLAMA3_ROPE),
        tie_word_embeddings=False,
    )


def _mistral_7b() -> ModelConfig:
    """Mistral-7B-v0.3 (no sliding window since v0.2; `sliding_window` would set
    one on every layer)."""
    return ModelConfig(
        family="mistral",
        vocab_size=32768,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )


def _smollm3_3b() -> ModelConfig:
    """SmolLM3-3B: Llama-like, tied, no RoPE on every 4th layer."""
    return ModelConfig(
        family="smollm3",
        vocab_size=128256,
        hidden_size=2048,
        num_layers=36,
        num_heads=16,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=11008,
        max_position_embeddings=65536,
        rope_theta=5000000.0,
        norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_layers=tuple((i + 1) % 4 != 0 for i in range(36)),
        bos_token_id=128000,
        eos_token_id=128012,
        pad_token_id=128004,
    )


def _qwen3(d, layers, heads, ffn, tied) -> ModelConfig:
    """Qwen3 dense: head_dim 128 and 8 KV heads at every size, q/k norms, no biases."""
    return ModelConfig(
        family="qwen3",
        vocab_size=151936,
        hidden_size=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=ffn,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        qk_norm=True,
        tie_word_embeddings=tied,
        bos_token_id=151643,
        eos_token_id=151645,
    )


def _gemma_layers(layers: int, every: int) -> tuple[str, ...]:
    """Every `every`-th layer global, the others sliding (HF's default layer_types)."""
    return tuple(
        "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)
    )


def _gemma(family, vocab, d, layers, heads, kv, head_dim, ffn, window, max_pos, **kw):
    return ModelConfig(
        family=family,
        vocab_size=vocab,
        hidden_size=d,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
        norm="gemma_rmsnorm",
        norm_eps=1e-6,
        activation="gelu_new",  # HF's gelu_pytorch_tanh
        tie_word_embeddings=True,
        post_norms=True,
        embed_scale=True,
        sliding_window=window,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        **kw,
    )


def _gemma2(d, layers, heads, kv, head_dim, ffn, scalar) -> ModelConfig:
    """Gemma 2: alternating local (4096) / global layers, both soft-caps."""
    return _gemma(
        "gemma2", 256000, d, layers, heads, kv, head_dim, ffn, 4096, 8192,
        rope_theta=10000.0,
        query_pre_attn_scalar=scalar,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        layer_types=_gemma_layers(layers, 2),
    )  # fmt: skip


def _gemma3(d, layers, heads, kv, head_dim, ffn, scalar, multimodal) -> ModelConfig:
    """Gemma 3 text: 5 local layers per global one; the 4B+ (multimodal)
    checkpoints have a 1024 window, 262208 head rows, 128k context and linear
    RoPE scaling x8 on the global layers; the 270M and 1B 512, 262144, 32k, none."""
    return _gemma(
        "gemma3",
        262208 if multimodal else 262144,
        d, layers, heads, kv, head_dim, ffn,
        1024 if multimodal else 512,
        131072 if multimodal else 32768,
        rope_theta=1000000.0,
        rope_scaling=(("factor", 8.0), ("rope_type", "linear")) if multimodal else None,
        local_rope_theta=10000.0,
        qk_norm=True,
        query_pre_attn_scalar=scalar,
        layer_types=_gemma_layers(layers, 6),
    )  # fmt: skip


def _tiny(family: str) -> ModelConfig:
    """2-layer, width-32 models with a 256-token vocabulary (ids 0/1/2 = pad/bos/eos)."""
    base = {
        "gpt2": PRESETS["gpt2"],
        "qwen2": PRESETS["qwen2.5-0.5b"],
        "qwen3": PRESETS["qwen3-0.6b"],
        "gemma2": PRESETS["gemma-2-2b"],
        "gemma3": PRESETS["gemma-3-1b"],
    }.get(family, PRESETS["llama-3.2-1b"])()
    fields = dataclasses.asdict(base)
    fields.update(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, head_dim=8)
    fields.update(intermediate_size=64, max_position_embeddings=128)
    fields.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    fields["num_kv_heads"] = 4 if family == "gpt2" else 2
    if family == "llama":
        # Untied, like the larger Llamas, so the tiny models cover both head kinds.
        fields.update(rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False)
    if family in ("gemma2", "gemma3"):
        # 3 layers (local, global, local) with a 4-token window.
        fields.update(num_layers=3, sliding_window=4, query_pre_attn_scalar=8.0)
        fields["layer_types"] = ("sliding_attention", "full_attention", "sliding_attention")
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
    "llama-3.1-8b": _llama31_8b,
    "mistral-7b": _mistral_7b,
    "smollm3-3b": _smollm3_3b,
    "qwen3-0.6b": lambda: _qwen3(1024, 28, 16, 3072, True),
    "qwen3-1.7b": lambda: _qwen3(2048, 28, 16, 6144, True),
    "qwen3-4b": lambda: _qwen3(2560, 36, 32, 9728, True),
    "qwen3-8b": lambda: _qwen3(4096, 36, 32, 12288, False),
    "qwen3-14b": lambda: _qwen3(5120, 40, 40, 17408, False),
    "qwen3-32b": lambda: _qwen3(5120, 64, 64, 25600, False),
    "gemma-3-270m": lambda: _gemma3(640, 18, 4, 1, 256, 2048, 256.0, False),
    "gemma-3-1b": lambda: _gemma3(1152, 26, 4, 1, 256, 6912, 256.0, False),
    "gemma-3-4b": lambda: _gemma3(2560, 34, 8, 4, 256, 10240, 256.0, True),
    "gemma-3-12b": lambda: _gemma3(3840, 48, 16, 8, 256, 15360, 256.0, True),
    "gemma-3-27b": lambda: _gemma3(5376, 62, 32, 16, 128, 21504, 168.0, True),
    "gemma-2-2b": lambda: _gemma2(2304, 26, 8, 4, 256, 9216, 256.0),
    "gemma-2-9b": lambda: _gemma2(3584, 42, 16, 8, 256, 14336, 256.0),
    "gemma-2-27b": lambda: _gemma2(4608, 46, 32, 16, 128, 36864, 144.0),
    "tiny-gpt2": lambda: _tiny("gpt2"),
    "tiny-llama": lambda: _tiny("llama"),
    "tiny-qwen2": lambda: _tiny("qwen2"),
    "tiny-qwen3": lambda: _tiny("qwen3"),
    "tiny-gemma2": lambda: _tiny("gemma2"),
    "tiny-gemma3": lambda: _tiny("gemma3"),
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
