"""Conversion between Hugging Face `config.json` dicts and `ModelConfig` fields.

Reads both the transformers 5 form (`rope_parameters`) and the older one
(top-level `rope_theta` plus `rope_scaling`) that real checkpoints ship with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classkd_jax.models.config import ModelConfig

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
# HF activation names -> ours. gelu_pytorch_tanh is the same formula as gelu_new.
_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _get(hf: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is ...:
        raise KeyError(f"config.json of model_type={hf.get('model_type')!r} lacks key {key!r}")
    return default


def _activation(hf: dict[str, Any], key: str, default: str) -> str:
    name = hf.get(key) or default
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"config.json {key}={name!r} is not supported; known: {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _rope(hf: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """Returns (rope_theta, rope_scaling pairs or None) from either config form."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = {k: v for k, v in {**legacy, **params}.items() if k != "rope_theta"}
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(
            f"config.json rope type {rope_type!r} is not supported (supported: 'default', 'llama3')"
        )
    missing = [k for k in _LLAMA3_KEYS if k not in scaling]
    if missing:
        raise KeyError(f"config.json llama3 rope scaling lacks keys {missing}")
    pairs = {"rope_type": "llama3", **{k: scaling[k] for k in _LLAMA3_KEYS}}
    pairs["original_max_position_embeddings"] = int(pairs["original_max_position_embeddings"])
    return theta, tuple(sorted(pairs.items()))


def _gpt2_fields(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise ValueError("config.json scale_attn_by_inverse_layer_idx=True is not supported")
    if hf.get("scale_attn_weights") is False:
        raise ValueError("config.json scale_attn_weights=False is not supported")
    d, heads = _get(hf, "n_embd"), _get(hf, "n_head")
    return dict(
        family="gpt2",
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=d,
        num_layers=_get(hf, "n_layer"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d // heads,
        intermediate_size=_get(hf, "n_inner", 4 * d),
        max_position_embeddings=_get(hf, "n_positions"),
        position_embedding="learned",
        norm="layernorm",
        norm_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)),
        mlp="gelu",
        activation=_activation(hf, "activation_function", "gelu_new"),
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", True)),
    )


def _llama_like_fields(hf: dict[str, Any], family: str) -> dict[str, Any]:
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError("config.json use_sliding_window=True (qwen2) is not supported")
    heads = _get(hf, "num_attention_heads")
    theta, scaling = _rope(hf)
    attention_bias = bool(_get(hf, "attention_bias", False))
    return dict(
        family=family,
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=_get(hf, "hidden_size"),
        num_layers=_get(hf, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_get(hf, "num_key_value_heads", heads),
        head_dim=_get(hf, "head_dim", _get(hf, "hidden_size") // heads),
        intermediate_size=_get(hf, "intermediate_size"),
        max_position_embeddings=_get(hf, "max_position_embeddings"),
        position_embedding="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        mlp="swiglu",
        activation=_activation(hf, "hidden_act", "silu"),
        # Qwen2 always has q/k/v biases and no o_proj bias; Llama's `attention_bias`
        # switches biases on all four projections.
        qkv_bias=True if family == "qwen2" else attention_bias,
        attn_out_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(_get(hf, "mlp_bias", False)) if family == "llama" else False,
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
    )


def fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Returns `ModelConfig` keyword arguments for a Hugging Face config dict."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        fields = _gpt2_fields(hf)
    elif model_type in ("llama", "qwen2"):
        fields = _llama_like_fields(hf, model_type)
    else:
        raise ValueError(
            f"unsupported architecture: config.json model_type={model_type!r} "
            f"(architectures={hf.get('architectures')}); supported: {sorted(ARCHITECTURES)}"
        )
    eos = hf.get("eos_token_id")
    fields.update(
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    return fields


def hf_from_fields(config: ModelConfig) -> dict[str, Any]:
    """Returns a transformers-5 `config.json` dict for `config`."""
    eos = config.eos_token_id
    common = dict(
        architectures=[ARCHITECTURES[config.family]],
        model_type=config.family,
        vocab_size=config.vocab_size,
        bos_token_id=config.bos_token_id,
        eos_token_id=list(eos) if isinstance(eos, tuple) else eos,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        dtype=config.param_dtype,
    )
    act = {"gelu_new": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}
    if config.family == "gpt2":
        return dict(
            common,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.intermediate_size,
            n_positions=config.max_position_embeddings,
            activation_function=act[config.activation],
            layer_norm_epsilon=config.norm_eps,
            scale_attn_weights=True,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    rope = {"rope_type": "default", **config.rope_scaling_dict, "rope_theta": config.rope_theta}
    out = dict(
        common,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=act[config.activation],
        rms_norm_eps=config.norm_eps,
        rope_parameters=rope,
        attention_dropout=0.0,
    )
    if config.family == "llama":
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out
