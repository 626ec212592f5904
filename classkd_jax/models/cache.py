"""The key/value cache for decoding: an explicit pytree, input and output of the model.

It is not a hidden Flax collection, so a sampler can carry it through
`lax.while_loop`, shard it and donate it (gemma's `gm` sampler does the same).

Layout: one `[B, H_kv, S, D_h]` array per layer for keys and for values (heads
before slots, as Hugging Face's `DynamicCache`). A decode step then reads each
layer's cache as the batched operand of its attention dots, with no transpose
and no slice of a stacked `[L, ...]` buffer, and writes the new slot in place;
both matter on CPU, where the cache is re-read every step.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from classkd_jax.models.config import ModelConfig

# Logical axis names of the cache fields (of each layer's array for keys and
# values), for `classkd_jax.sharding`.
CACHE_AXES = {
    "keys": ("batch", "kv_heads", "length", "head_dim"),
    "values": ("batch", "kv_heads", "length", "head_dim"),
    "mask": ("batch", "length"),
    "index": (),
}


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for `S` slots.

    Attributes:
      keys: a tuple of L arrays [B, H_kv, S, D_h] compute dtype; RoPE applied.
      values: a tuple of L arrays [B, H_kv, S, D_h] compute dtype.
      mask: [B, S] bool, True where a slot holds a valid (non-padding) token.
      index: [] int32, the next slot to write (shared by all rows).

    The caller keeps `index + T <= S`: like any `dynamic_update_slice`, a write
    past the end is clamped (it would overwrite the last slots), and a traced
    index cannot be checked at trace time.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.keys)


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
    shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
    layers = range(config.num_layers)
    return KVCache(
        keys=tuple(jnp.zeros(shape, dtype) for _ in layers),
        values=tuple(jnp.zeros(shape, dtype) for _ in layers),
        mask=jnp.zeros((batch_size, max_length), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )
