"""`ModelConfig`: the shape and numerics of one decoder-only transformer.

One frozen dataclass covers GPT-2, Llama, Mistral, Qwen2, Qwen3, SmolLM3,
Gemma 2 and Gemma 3 (text). It is hashable, so it can be a
static argument of `jax.jit`, and it converts to and from a Hugging Face
`config.json` dict (`from_hf_config` / `to_hf_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma2", "gemma3")
LAYER_TYPES = ("full_attention", "sliding_attention")
ROPE_TYPES = ("default", "llama3", "linear")
# Training-time rates, not part of the function the model computes.
DROPOUT_FIELDS = ("embed_dropout", "attention_dropout", "residual_dropout")
REMAT = ("none", "full", "dots")  # rematerialisation policies (ModelConfig.remat)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The HF `torch_dtype` / `dtype` written by save_hf, by our param dtype name.
_HF_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _canonical_dtype(name: Any, field: str) -> str:
    """Returns 'float32' | 'bfloat16' | 'float16' for a name or a numpy/jax dtype."""
    name = jnp.dtype(name).name if not isinstance(name, str) else name
    if name not in _DTYPES:
        raise ValueError(f"ModelConfig.{field}={name!r}: expected one of {sorted(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer (hashable, jit-static).

    Attributes:
      family: one of `FAMILIES`; decides the Hugging Face tensor names.
      position_embedding: 'learned' (GPT-2) or 'rope' (the others).
      rope_scaling: None, or a sorted tuple of (key, value) pairs of the HF
        rope scaling dict; `rope_type` 'llama3' or 'linear' (Gemma 3's global
        layers). With `local_rope_theta` set it applies to full-attention layers only.
      local_rope_theta: RoPE base of the sliding-window layers when it differs
        from `rope_theta` (Gemma 3: 1e4 local, 1e6 global); None: `rope_theta`.
      norm: 'layernorm' (with bias), 'rmsnorm' (Llama: `w * x_hat` in compute
        dtype) or 'gemma_rmsnorm' (`(1 + w) * x_hat` in float32, scales init 0).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3, Gemma 3).
      post_norms: Gemma's four norms per block (the attention and MLP outputs
        are normalised too before their residual add).
      embed_scale: multiply the embeddings by sqrt(hidden_size), cast to the
        param dtype first as Hugging Face does (Gemma).
      query_pre_attn_scalar: attention logits are scaled by its -1/2 power
        instead of head_dim's (Gemma); None: head_dim.
      attn_logit_softcap: `c * tanh(logits / c)` on the attention logits before
        the mask (Gemma 2); None: off.
      final_logit_softcap: the same on the output logits (Gemma 2); every
        place that forms logits from `hidden @ head` applies it (`softcap`).
      sliding_window: W; a sliding layer's query at index t sees keys at
        indices t - W < s <= t (token index in a forward, slot in the cache).
      layer_types: per layer 'full_attention' or 'sliding_attention'; None: all full.
      rope_layers: per layer whether it applies RoPE (SmolLM3: every 4th does
        not); None: all do.
      mlp: 'gelu' (up -> act -> down, GPT-2) or 'swiglu' (act(gate) * up -> down;
        with a GELU activation it is Gemma's GeGLU).
      activation: 'gelu_new' (tanh approximation), 'gelu' (exact) or 'silu'.
      eos_token_id: an int or a tuple of ints (Llama 3 has several).
      dtype: compute dtype name; `param_dtype`: storage dtype name of params.
      embed_dropout: dropout rate on the input embeddings (GPT-2's `embd_pdrop`).
      attention_dropout: dropout rate on the attention probabilities (GPT-2's
        `attn_pdrop`, the others' `attention_dropout`).
      residual_dropout: dropout rate on each attention and MLP output before
        its residual add (GPT-2's `resid_pdrop`).
        The three apply only in a forward called with `deterministic=False`
        and a 'dropout' rng (the trained roles' training forward); every other
        pass (teacher, sampling, scoring, validation) ignores them.
      remat: what each block keeps for the backward pass (`REMAT` policies):
        'none' keeps every activation; 'full' keeps only the block's input and
        recomputes the rest (`nn.remat`); 'dots' keeps the outputs of the
        weight matmuls (projections, MLP) and recomputes attention scores and
        elementwise ops (`jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims`,
        MaxText's 'minimal' `remat_policy`). True / False mean 'full' / 'none'.
      scan_layers: stack the blocks with `nn.scan` (params under 'layers' with a
        leading 'layers' axis: one compiled block, what training wants). False
        unrolls them (params under 'layers_0' .. 'layers_{L-1}'), which is what
        cached decoding wants; `unstack_layers` / `stack_layers` convert.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    family: str = "llama"
    position_embedding: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    local_rope_theta: float | None = None
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    mlp: str = "swiglu"
    activation: str = "silu"
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_layers: tuple[bool, ...] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    embed_dropout: float = 0.0
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True

    def __post_init__(self):
        # Normalise fields people pass in looser forms, so equality/hash are stable.
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("dtype", _canonical_dtype(self.dtype, "dtype"))
        set_("param_dtype", _canonical_dtype(self.param_dtype, "param_dtype"))
        if isinstance(self.remat, bool) or self.remat is None:
            set_("remat", "full" if self.remat else "none")
        if isinstance(self.eos_token_id, list | tuple):
            eos = tuple(int(e) for e in self.eos_token_id)
            set_("eos_token_id", eos[0] if len(eos) == 1 else eos)
        if isinstance(self.rope_scaling, dict):
            set_("rope_scaling", tuple(sorted(self.rope_scaling.items())))
        elif self.rope_scaling is not None:  # a JSON list of pairs (checkpoint meta)
            set_("rope_scaling", tuple(sorted(tuple(p) for p in self.rope_scaling)))
        if self.layer_types is not None:
            types = tuple(self.layer_types)
            set_("layer_types", None if set(types) <= {"full_attention"} else types)
        if self.rope_layers is not None:
            rope = tuple(bool(r) for r in self.rope_layers)
            set_("rope_layers", None if all(rope) else rope)
        for key in DROPOUT_FIELDS:
            set_(key, float(getattr(self, key)))
        for key in ("local_rope_theta", "query_pre_attn_scalar"):
            if getattr(self, key) is not None:
                set_(key, float(getattr(self, key)))
        for key in ("attn_logit_softcap", "final_logit_softcap"):
            if getattr(self, key) is not None:
                set_(key, float(getattr(self, key)) or None)  # 0 (a division by 0 in HF): off
        self._validate()

    def _validate(self):
        choices = {
            "family": FAMILIES,
            "position_embedding": ("learned", "rope"),
            "norm": ("layernorm", "rmsnorm", "gemma_rmsnorm"),
            "mlp": ("gelu", "swiglu"),
            "activation": ("gelu_new", "gelu", "silu", "relu"),
            "remat": REMAT,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"ModelConfig.{key}={getattr(self, key)!r}: expected {allowed}")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, key) <= 0:
                raise ValueError(f"ModelConfig.{key}={getattr(self, key)} must be positive")
        for key in DROPOUT_FIELDS:
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"ModelConfig.{key}={getattr(self, key)} must be in [0, 1)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling_dict.get("rope_type")
            if rope_type not in ROPE_TYPES:
                raise ValueError(
                    f"ModelConfig.rope_scaling rope_type={rope_type!r} is not supported "
                    f"(supported: {ROPE_TYPES})"
                )
        self._validate_layers()

    def _validate_layers(self):
        if self.rope_layers is not None and len(self.rope_layers) != self.num_layers:
            raise ValueError(
                f"ModelConfig.rope_layers has {len(self.rope_layers)} entries for "
                f"num_layers={self.num_layers}"
            )
        if self.layer_types is None:
            return
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"ModelConfig.layer_types has {len(self.layer_types)} entries for "
                f"num_layers={self.num_layers}"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"ModelConfig.layer_types {unknown}: expected {LAYER_TYPES}")
        if not self.sliding_window or self.sliding_window <= 0:
            raise ValueError(
                f"ModelConfig.sliding_window={self.sliding_window!r} must be positive "
                "when layer_types has sliding_attention layers"
            )

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer whether it attends within `sliding_window` only."""
        types = self.layer_types or ("full_attention",) * self.num_layers
        return tuple(t == "sliding_attention" for t in types)

    @property
    def has_sliding(self) -> bool:
        return any(self.sliding_layers)

    @property
    def layer_flags(self) -> tuple[tuple[bool, bool], ...]:
        """Per layer (sliding window?, RoPE?): what a block varies by."""
        rope = self.rope_layers or (True,) * self.num_layers
        return tuple(zip(self.sliding_layers, rope, strict=True))

    @property
    def has_dropout(self) -> bool:
        """Whether any dropout rate is nonzero (a training forward needs an rng)."""
        return any(getattr(self, k) > 0 for k in DROPOUT_FIELDS)

    def with_dropout(self, rate: float) -> ModelConfig:
        """This config with every dropout rate set to `rate`."""
        return self.replace(**dict.fromkeys(DROPOUT_FIELDS, float(rate)))

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.dtype])

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.param_dtype])

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """All end-of-sequence ids as a tuple (empty when none)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (self.eos_token_id,)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Builds a config from a Hugging Face `config.json` dict.

        Args:
          hf: the parsed config.json (or `PretrainedConfig.to_dict()`).
          **overrides: fields to set on top (e.g. `dtype='bfloat16'`).

        Raises:
          ValueError: naming `model_type` when the architecture is not supported,
            or the key when a feature we do not implement is switched on.
        """
        from classkd_jax.models import hf_config

        return cls(**{**hf_config.fields_from_hf(hf), **overrides})

    def to_hf_config(self) -> dict[str, Any]:
        """Returns a `config.json` dict that transformers' Auto classes load."""
        from classkd_jax.models import hf_config

        out = hf_config.hf_from_fields(self)
        # A field the family's HF config cannot express (e.g. a GPT-2 with RMSNorm)
        # would be silently dropped: refuse instead, naming it.
        # Dropout is written where the family's config has a key for it (GPT-2:
        # all three; the others: `attention_dropout`) and is not checked: it is a
        # training setting, not part of what the model computes.
        back = ModelConfig.from_hf_config(
            out,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
            scan_layers=self.scan_layers,
            **{k: getattr(self, k) for k in DROPOUT_FIELDS},
        )
        lost = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(back, f.name) != getattr(self, f.name)
        ]
        if lost:
            raise ValueError(
                f"ModelConfig fields {lost} are not expressible in a Hugging Face "
                f"{self.family!r} config.json"
            )
        return out
