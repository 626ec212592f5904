"""Building blocks: projections, norms, RoPE and the MLP, all with logical axis names.

Every parameter is created through `nn.with_logical_partitioning`, so its
logical axis names ('embed', 'heads', 'mlp', ...) travel with it and
`classkd_jax.sharding` decides the mesh layout in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax.models.config import ModelConfig

# Hugging Face initialises linear and embedding weights with N(0, 0.02).
INIT_STDDEV = 0.02


def normal_init(names: Sequence[str | None]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(INIT_STDDEV), tuple(names))


def const_init(value: float, names: Sequence[str | None]) -> nn.initializers.Initializer:
    init = nn.initializers.ones if value == 1.0 else nn.initializers.zeros
    return nn.with_logical_partitioning(init, tuple(names))


class Projection(nn.Module):
    """A linear map that contracts the last `len(in_names)` axes of its input.

    Attributes:
      features: output feature shape, e.g. (H, D_h) for a query projection.
      in_names: logical names of the contracted input axes.
      out_names: logical names of the output feature axes.
      use_bias: adds a bias of shape `features`.
    """

    config: ModelConfig
    features: tuple[int, ...]
    in_names: tuple[str, ...]
    out_names: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, n_in = self.config, len(self.in_names)
        kernel = self.param(
            "kernel",
            normal_init(self.in_names + self.out_names),
            tuple(x.shape[-n_in:]) + tuple(self.features),
            cfg.params_dtype,
        )
        dtype = cfg.compute_dtype
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias", const_init(0.0, self.out_names), tuple(self.features), cfg.params_dtype
            )
            y = y + bias.astype(dtype)
        return y


def norm_scale_init(config: ModelConfig) -> float:
    """The initial norm scale: 0 for Gemma's `(1 + w)` RMSNorm, else 1."""
    return 0.0 if config.norm == "gemma_rmsnorm" else 1.0


def softcap(logits: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2's soft-capping `cap * tanh(logits / cap)`; identity when `cap` is None."""
    if cap is None:
        return logits
    return cap * jnp.tanh(logits / cap)


def _gathered(v: jax.Array) -> jax.Array:
    """A small parameter vector replicated for use (a no-op outside
    `classkd_jax.sharding.activation_sharding`)."""
    return nn.with_logical_constraint(v, (None,))


class Norm(nn.Module):
    """LayerNorm (with bias) or RMSNorm, normalising in float32 like Hugging Face.

    Attributes:
      axis_name: logical name of the normalised (last) axis: 'embed', or
        'head_dim' for the per-head q/k norms.
    """

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        d = x.shape[-1]
        init = const_init(norm_scale_init(cfg), (self.axis_name,))
        # Stored sharded like 'embed' but used whole: FSDP gathers this [D] vector,
        # so the batch-sharded activations are never resharded along D to meet
        # it (XLA would otherwise replicate them, and their gradients, in full).
        scale = _gathered(self.param("scale", init, (d,), cfg.params_dtype))
        x32 = x.astype(jnp.float32)
        if cfg.norm == "gemma_rmsnorm":
            # HF Gemma2/3RMSNorm: everything in fp32, (1 + w), then cast (not Llama's order).
            var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
            y = x32 * jax.lax.rsqrt(var + cfg.norm_eps) * (1.0 + scale.astype(jnp.float32))
            return y.astype(cfg.compute_dtype)
        if cfg.norm == "rmsnorm":
            # HF LlamaRMSNorm: normalise in fp32, cast back, then scale in the input dtype.
            var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
            y = (x32 * jax.lax.rsqrt(var + cfg.norm_eps)).astype(cfg.compute_dtype)
            return scale.astype(cfg.compute_dtype) * y
        bias = self.param("bias", const_init(0.0, (self.axis_name,)), (d,), cfg.params_dtype)
        bias = _gathered(bias)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(cfg.compute_dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu_new":  # GPT-2's tanh approximation
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "silu":
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


class Mlp(nn.Module):
    """GPT-2's `down(act(up(x)))` or Llama's SwiGLU `down(act(gate(x)) * up(x))`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        proj = lambda f, i, o, name: Projection(
            cfg, (f,), (i,), (o,), use_bias=cfg.mlp_bias, name=name
        )
        up = proj(cfg.intermediate_size, "embed", "mlp", "up")(x)
        if cfg.mlp == "swiglu":
            gate = proj(cfg.intermediate_size, "embed", "mlp", "gate")(x)
            h = activation(cfg.activation, gate) * up
        else:
            h = activation(cfg.activation, up)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return proj(cfg.hidden_size, "mlp", "embed", "down")(h)


def rope_inv_freq(config: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse RoPE frequencies [D_h // 2] float32, with the configured scaling.

    Computed in float32 exactly as transformers' `_compute_default_rope_parameters`,
    `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters`
    do, so positions match checkpoints bit for bit.

    Args:
      config: the model config.
      local: the frequencies of sliding-window layers: `local_rope_theta`
        unscaled where it is set (Gemma 3), else the same as the others.
    """
    dim = config.head_dim
    local = local and config.local_rope_theta is not None
    theta = config.local_rope_theta if local else config.rope_theta
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)
    scaling = {} if local else config.rope_scaling_dict
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type != "llama3":
        return inv_freq
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates `x` [B, T, H, D_h] by `positions` [B, T] (HF's rotate-half convention)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D_h/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D_h]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
