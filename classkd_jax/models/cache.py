"""The key/value cache for decoding: an explicit pytree, input and output of the model.

It is not a hidden Flax collection, so a sampler can carry it through
`lax.while_loop`, shard it and donate it (gemma's `gm` sampler does the same).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from classkd_jax.models.config import ModelConfig

# Logical axis names of the cache fields, for `classkd_jax.sharding`.
CACHE_AXES = {
    "keys": ("layers", "batch", "length", "kv_heads", "head_dim"),
    "values": ("layers", "batch", "length", "kv_heads", "head_dim"),
    "mask": ("batch", "length"),
    "index": (),
}


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for `S` slots.

    Attributes:
      keys: [L, B, S, H_kv, D_h] compute dtype; RoPE already applied.
      values: [L, B, S, H_kv, D_h] compute dtype.
      mask: [B, S] bool, True where a slot holds a valid (non-padding) token.
      index: [] int32, the next slot to write (shared by all rows).

    The caller keeps `index + T <= S`: like any `dynamic_update_slice`, a write
    past the end is clamped (it would overwrite the last slots), and a traced
    index cannot be checked at trace time.
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]


def init_cache(
    config: ModelConfig, batch_size: int, max_length: int, dtype: jnp.dtype | str | None = None
) -> KVCache:
    """Returns an all-empty cache (no valid slot, index 0).

    Args:
      config: the model's config.
      batch_size: B.
      max_length: S, the number of slots (prompt + generated tokens).
      dtype: dtype of keys/values; defaults to the compute dtype.
    """
    dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch_size, max_length), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )
