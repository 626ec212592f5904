"""`ModelConfig`: the shape and numerics of one decoder-only transformer.

One frozen dataclass covers GPT-2, Llama and Qwen2. It is hashable, so it can be a
static argument of `jax.jit`, and it converts to and from a Hugging Face
`config.json` dict (`from_hf_config` / `to_hf_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("gpt2", "llama", "qwen2")
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
      family: 'gpt2' | 'llama' | 'qwen2'; decides the Hugging Face tensor names.
      position_embedding: 'learned' (GPT-2) or 'rope' (Llama, Qwen2).
      rope_scaling: None, or a sorted tuple of (key, value) pairs of the HF
        `rope_scaling` dict; only `rope_type='llama3'` is supported.
      norm: 'layernorm' (with bias) or 'rmsnorm'.
      mlp: 'gelu' (up -> act -> down, GPT-2) or 'swiglu' (act(gate) * up -> down).
      activation: 'gelu_new' (tanh approximation), 'gelu' (exact) or 'silu'.
      eos_token_id: an int or a tuple of ints (Llama 3 has several).
      dtype: compute dtype name; `param_dtype`: storage dtype name of params.
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
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    mlp: str = "swiglu"
    activation: str = "silu"
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
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
        self._validate()

    def _validate(self):
        choices = {
            "family": FAMILIES,
            "position_embedding": ("learned", "rope"),
            "norm": ("layernorm", "rmsnorm"),
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
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling_dict.get("rope_type")
            if rope_type not in ("llama3", "default"):
                raise ValueError(
                    f"ModelConfig.rope_scaling rope_type={rope_type!r} is not supported "
                    "(supported: 'llama3', 'default')"
                )

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
        back = ModelConfig.from_hf_config(
            out,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
            scan_layers=self.scan_layers,
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
