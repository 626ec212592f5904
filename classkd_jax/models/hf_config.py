"""Conversion between Hugging Face `config.json` dicts and `ModelConfig` fields.

Reads both the transformers 5 form (`rope_parameters`, for Gemma 3 nested by
layer type) and the older one (top-level `rope_theta` plus `rope_scaling`, and
Gemma 3's `rope_local_base_freq` / `sliding_window_pattern`) that real
checkpoints ship with. Keys a config.json leaves out mean transformers'
defaults for that model type (the hub's multimodal Gemma 3 `text_config`s
list only what differs from `Gemma3TextConfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classkd_jax.models.config import ModelConfig

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
# Our family -> the `model_type` save_hf writes (Gemma 3's text-only model).
MODEL_TYPES = {"gemma3": "gemma3_text"}
# config.json model_types we read; 'gemma3' is the multimodal checkpoint
# (4B and larger), of which we take the text model.
SUPPORTED_MODEL_TYPES = (
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "smollm3",
)
# transformers 5.24's Gemma2Config / Gemma3TextConfig defaults, for keys a
# config.json leaves out.
_GEMMA_DEFAULTS = {
    "gemma2": dict(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=8192,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        pattern=2,
    ),
    "gemma3_text": dict(
        vocab_size=262208,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=131072,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        pattern=6,
    ),
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


def _rope(
    hf: dict[str, Any], params: dict[str, Any] | None = None, default_theta: float = 10000.0
) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """Returns (rope_theta, rope_scaling pairs or None) from either config form.

    `params`: the `rope_parameters` dict to read (default the top-level one).
    """
    params = dict(hf.get("rope_parameters") or {}) if params is None else dict(params)
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    scaling = {k: v for k, v in {**legacy, **params}.items() if k != "rope_theta"}
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        return theta, (("factor", float(_get(scaling, "factor"))), ("rope_type", "linear"))
    if rope_type != "llama3":
        raise ValueError(
            f"config.json rope type {rope_type!r} is not supported "
            "(supported: 'default', 'linear', 'llama3')"
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
        # GPT2Config's defaults are 0.1 each, as in every released GPT-2 config.json.
        embed_dropout=float(_get(hf, "embd_pdrop", 0.1)),
        attention_dropout=float(_get(hf, "attn_pdrop", 0.1)),
        residual_dropout=float(_get(hf, "resid_pdrop", 0.1)),
    )


def _layer_types(hf: dict[str, Any], default_pattern: int) -> tuple[str, ...]:
    """`layer_types`, or Gemma's older `sliding_window_pattern` (every n-th layer global)."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    n = int(
        hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or default_pattern
    )
    layers = _get(hf, "num_hidden_layers")
    return tuple("sliding_attention" if (i + 1) % n else "full_attention" for i in range(layers))


def _qwen3_layers(hf: dict[str, Any]) -> dict[str, Any]:
    """Qwen3's optional sliding window (off in every released checkpoint)."""
    if not hf.get("use_sliding_window"):
        return {}
    window = _get(hf, "sliding_window")
    types = hf.get("layer_types") or [
        "sliding_attention" if i >= _get(hf, "max_window_layers") else "full_attention"
        for i in range(_get(hf, "num_hidden_layers"))
    ]
    if "sliding_attention" not in types:  # max_window_layers >= the depth: no window
        return {}
    return dict(sliding_window=window, layer_types=tuple(types))


def _llama_like_fields(hf: dict[str, Any], family: str) -> dict[str, Any]:
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError("config.json use_sliding_window=True (qwen2) is not supported")
    heads = _get(hf, "num_attention_heads")
    theta, scaling = _rope(hf)
    # transformers' Mistral has no attention biases whatever the config says.
    attention_bias = family != "mistral" and bool(_get(hf, "attention_bias", False))
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
        # Qwen2 always has q/k/v biases and no o_proj bias; Llama's and Qwen3's
        # `attention_bias` switches biases on all four projections.
        qkv_bias=True if family == "qwen2" else attention_bias,
        attn_out_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(_get(hf, "mlp_bias", False)) if family in ("llama", "smollm3") else False,
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        qk_norm=family == "qwen3",
        **(_qwen3_layers(hf) if family == "qwen3" else {}),
        **(_mistral_layers(hf) if family == "mistral" else {}),
        **(_smollm3_layers(hf) if family == "smollm3" else {}),
    )


def _smollm3_layers(hf: dict[str, Any]) -> dict[str, Any]:
    """SmolLM3: no RoPE on every `no_rope_layer_interval`-th layer (`no_rope_layers`
    1 = RoPE), and its optional window on the layers `layer_types` names."""
    layers = _get(hf, "num_hidden_layers")
    rope = hf.get("no_rope_layers") or [
        int((i + 1) % int(hf.get("no_rope_layer_interval", 4)) != 0) for i in range(layers)
    ]
    out: dict[str, Any] = dict(rope_layers=tuple(bool(r) for r in rope))
    if hf.get("use_sliding_window") and hf.get("sliding_window") is not None:
        types = hf.get("layer_types") or [
            "full_attention" if r else "sliding_attention" for r in rope
        ]
        if "sliding_attention" in types:
            out.update(sliding_window=hf["sliding_window"], layer_types=tuple(types))
    return out


def _mistral_layers(hf: dict[str, Any]) -> dict[str, Any]:
    """Mistral: one sliding window on every layer, or none (`sliding_window` null)."""
    if hf.get("layer_types"):
        raise ValueError(
            "config.json layer_types (mistral) is not supported: transformers' Mistral "
            "ignores it (a Ministral checkpoint?)"
        )
    window = hf.get("sliding_window", 4096)  # MistralConfig's default
    if window is None:
        return {}
    return dict(sliding_window=window, layer_types=("sliding_attention",) * hf["num_hidden_layers"])


def _gemma_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Gemma 2 and Gemma 3 (text) fields; missing keys take transformers' defaults."""
    d = _GEMMA_DEFAULTS[model_type]
    hf = {**{k: v for k, v in d.items() if k != "pattern"}, **hf}
    if hf.get("use_bidirectional_attention"):
        raise ValueError("config.json use_bidirectional_attention=True is not supported")
    if hf.get("attention_bias"):
        raise ValueError(f"config.json attention_bias=True ({model_type}) is not supported")
    fields: dict[str, Any] = dict(
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=_get(hf, "hidden_size"),
        num_layers=_get(hf, "num_hidden_layers"),
        num_heads=_get(hf, "num_attention_heads"),
        num_kv_heads=_get(hf, "num_key_value_heads"),
        head_dim=_get(hf, "head_dim"),
        intermediate_size=_get(hf, "intermediate_size"),
        max_position_embeddings=_get(hf, "max_position_embeddings"),
        position_embedding="rope",
        norm="gemma_rmsnorm",
        norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        mlp="swiglu",
        activation=_activation(hf, "hidden_activation", "gelu_pytorch_tanh"),
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", True)),
        post_norms=True,
        embed_scale=True,
        query_pre_attn_scalar=_get(hf, "query_pre_attn_scalar"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window"),
        layer_types=_layer_types(hf, d["pattern"]),
    )
    if model_type == "gemma2":
        fields.update(family="gemma2", attn_logit_softcap=hf.get("attn_logit_softcapping"))
        fields["rope_theta"], fields["rope_scaling"] = _rope(hf)
        return fields
    # Gemma 3: RoPE by layer type. transformers 5.24's Gemma3Attention does not
    # apply `attn_logit_softcapping` (it is never passed on), so neither do we.
    params = dict(hf.get("rope_parameters") or {})
    nested = "full_attention" in params or "sliding_attention" in params
    full = params.get("full_attention") if nested else params
    local = dict(params.get("sliding_attention") or {}) if nested else {}
    theta, scaling = _rope(hf, full or {}, default_theta=1e6)
    if local.get("rope_type", "default") != "default":
        raise ValueError(
            f"config.json rope_parameters.sliding_attention rope type "
            f"{local['rope_type']!r} is not supported (only 'default')"
        )
    local_theta = local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))
    fields.update(
        family="gemma3",
        qk_norm=True,
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=float(local_theta),
    )
    return fields


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The language model's config of a multimodal `gemma3` config.json (its
    `text_config`, token ids from the top level where it lacks them); any
    other config as is."""
    if hf.get("model_type") != "gemma3":
        return hf
    if not isinstance(hf.get("text_config"), dict):
        raise KeyError("config.json of model_type='gemma3' lacks key 'text_config'")
    text = dict(hf["text_config"])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        if key not in text and key in hf:
            text[key] = hf[key]
    # Gemma3ForConditionalGeneration never applies the final soft-cap (None in
    # every released checkpoint anyway): the text model computes what it computes.
    text.update(model_type="gemma3_text", final_logit_softcapping=None)
    return text


def fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Returns `ModelConfig` keyword arguments for a Hugging Face config dict
    (of a multimodal `gemma3` checkpoint: its text model's)."""
    model_type = hf.get("model_type")
    hf = text_config(hf)
    if model_type == "gpt2":
        fields = _gpt2_fields(hf)
    elif model_type in ("llama", "mistral", "qwen2", "qwen3", "smollm3"):
        fields = _llama_like_fields(hf, model_type)
    elif model_type in ("gemma2", "gemma3", "gemma3_text"):
        # Gemma's token ids default to pad 0, eos 1, bos 2 (Gemma2Config, Gemma3TextConfig).
        hf = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, **hf}
        fields = _gemma_fields(hf, "gemma2" if model_type == "gemma2" else "gemma3_text")
    else:
        raise ValueError(
            f"unsupported architecture: config.json model_type={model_type!r} "
            f"(architectures={hf.get('architectures')}); supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type != "gpt2":  # the other families only drop attention probabilities
        fields["attention_dropout"] = float(_get(hf, "attention_dropout", 0.0))
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
        model_type=MODEL_TYPES.get(config.family, config.family),
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
            resid_pdrop=config.residual_dropout,
            embd_pdrop=config.embed_dropout,
            attn_pdrop=config.attention_dropout,
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
        rms_norm_eps=config.norm_eps,
        rope_parameters=rope,
        attention_dropout=config.attention_dropout,
    )
    if config.family in ("gemma2", "gemma3"):
        return _gemma_hf(config, out)
    out["hidden_act"] = act[config.activation]
    if config.family == "llama":
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif config.family == "mistral":
        out.update(sliding_window=config.sliding_window if config.has_sliding else None)
    elif config.family == "qwen3":
        out.update(attention_bias=config.qkv_bias, **_qwen3_window_hf(config))
    elif config.family == "smollm3":
        out.update(
            attention_bias=config.qkv_bias,
            mlp_bias=config.mlp_bias,
            no_rope_layers=[int(r) for r in (r for _, r in config.layer_flags)],
            use_sliding_window=config.has_sliding,
            sliding_window=config.sliding_window if config.has_sliding else None,
            layer_types=list(config.layer_types or ("full_attention",) * config.num_layers),
        )
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def _qwen3_window_hf(config: ModelConfig) -> dict[str, Any]:
    if not config.has_sliding:
        return dict(use_sliding_window=False, sliding_window=None)
    return dict(
        use_sliding_window=True,
        sliding_window=config.sliding_window,
        max_window_layers=config.sliding_layers.index(True),
        layer_types=list(config.layer_types),
    )


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _gemma_hf(config: ModelConfig, out: dict[str, Any]) -> dict[str, Any]:
    rope = out["rope_parameters"]
    if config.family == "gemma3":
        local = {"rope_type": "default", "rope_theta": config.local_rope_theta}
        rope = {"full_attention": rope, "sliding_attention": local}
    types = config.layer_types or ("full_attention",) * config.num_layers
    out.update(
        hidden_activation="gelu_pytorch_tanh" if config.activation == "gelu_new" else "gelu",
        rope_parameters=rope,
        # transformers' strict configs want an int here (Gemma-2-27B's 144 is one).
        query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar or config.head_dim),
        sliding_window=config.sliding_window,
        layer_types=list(types),
        final_logit_softcapping=config.final_logit_softcap,
        attn_logit_softcapping=config.attn_logit_softcap,
        attention_bias=False,
        use_bidirectional_attention=False,
    )
    return out
