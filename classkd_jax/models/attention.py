"""Grouped-query self-attention with an optional per-layer KV cache.

The masks are built once per forward pass (`attention_mask` /
`cache_attention_mask`, and their sliding-window restriction `window_mask`)
and shared by all layers; each layer only picks its mask and RoPE frequencies
(by its layer type), projects, rotates, writes its cache slice and attends.
Softmax runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from classkd_jax.models.config import ModelConfig
from classkd_jax.models.layers import Norm, Projection, apply_rope, rope_inv_freq, softcap

LayerCache = tuple[jax.Array, jax.Array]  # keys, values: [B, H_kv, S, D_h] each
# A per-layer flag (is it a sliding-window layer, does it use RoPE): a Python
# bool when the blocks are unrolled (decided at trace time), a [] bool array
# when scanned (one entry of a scanned [L] array).
Flag = bool | jax.Array


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """Mask of a full forward pass: causal, within equal nonzero segment ids.

    Args:
      segment_ids: [B, T] int32, 0 = padding.

    Returns:
      [B, T, T] bool, True where query t may attend to key s.
    """
    t = segment_ids.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    valid = (segment_ids != 0)[:, :, None]
    return causal[None] & same & valid


def cache_attention_mask(slot_mask: jax.Array, index: jax.Array, num_new: int) -> jax.Array:
    """Mask of a cached step: new token t (slot index+t) sees valid slots <= its own.

    Args:
      slot_mask: [B, S] bool, slot validity after writing the new tokens.
      index: [] int32, the slot of the first new token.
      num_new: T, the number of new tokens.

    Returns:
      [B, T, S] bool.
    """
    s = slot_mask.shape[1]
    query_slot = index + jnp.arange(num_new)
    causal = jnp.arange(s)[None, :] <= query_slot[:, None]  # [T, S]
    return causal[None] & slot_mask[:, None, :]


def window_mask(mask: jax.Array, query_index: jax.Array, window: int) -> jax.Array:
    """`mask` [B, T, S] restricted to keys at indices `query_index - window < s`.

    Args:
      mask: [B, T, S] bool, a full (causal) mask.
      query_index: [T] int32, each query's index on the key axis (its token
        index in a forward pass, its slot in cache mode), as HF's `cache_position`.
      window: W, the sliding window.
    """
    s = mask.shape[-1]
    near = jnp.arange(s)[None, :] > query_index[:, None] - window  # [T, S]
    return mask & near[None]


def pick(flag: Flag, if_true, if_false):
    """`if_true` or `if_false` by a per-layer flag: statically for a Python bool,
    else `jnp.where` (a scanned stack's per-layer flag)."""
    if isinstance(flag, bool):
        return if_true if flag else if_false
    return jnp.where(flag, if_true, if_false)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    dtype: jnp.dtype,
    scale_dim: float | None = None,
    logit_cap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Attention of `q` [B, T, H, D_h] over `k`, `v` [B, H_kv, S, D_h] with `mask` [B, T, S].

    Keys and values are heads-major (the cache layout), so both dots batch over
    (B, H_kv) with no transpose of the keys or values. Query head h uses key head
    h // (H // H_kv), as Hugging Face's `repeat_kv`. Logits are scaled by
    `scale_dim ** -0.5` (default D_h), soft-capped by `logit_cap` if given,
    then masked (HF's order). Fully masked rows (padding queries) give finite
    garbage, never NaN. With `dropout_rng`, the probabilities are dropped at
    `dropout_rate` and the kept ones scaled by `1 / (1 - rate)` (HF's attention dropout).
    """
    b, t, h, d = q.shape
    kv = k.shape[1]
    q = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / jnp.sqrt(jnp.float32(scale_dim or d)))
    logits = softcap(logits, logit_cap)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    probs = probs.astype(dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(dtype))
    return out.reshape(b, t, h, d)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention of every family (see `ModelConfig`).

    Attributes:
      deterministic: no dropout (every pass but a trained role's training forward).
    """

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        masks: tuple[jax.Array, jax.Array | None],
        layer_cache: LayerCache | None = None,
        index: jax.Array | None = None,
        sliding: Flag = False,
        rope: Flag = True,
    ) -> tuple[jax.Array, LayerCache | None]:
        """Attends over the new tokens, or over the cache with them written in.

        Args:
          x: [B, T, D] compute dtype.
          positions: [B, T] int32, used by RoPE.
          masks: (full, window) masks [B, T, T] bool, or [B, T, S] in cache
            mode; window is None when the model has no sliding layer.
          layer_cache: this layer's (keys, values) [B, H_kv, S, D_h], or None.
          index: [] int32 slot of the first new token (cache mode only).
          sliding: whether this is a sliding-window layer (see `Flag`).
          rope: whether this layer rotates q and k (SmolLM3's no-RoPE layers: False).

        Returns:
          ([B, T, D] compute dtype, the updated layer cache or None).
        """
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        kv_heads = (cfg.num_kv_heads, cfg.head_dim)
        proj = lambda f, names, name: Projection(
            cfg, f, ("embed",), names, use_bias=cfg.qkv_bias, name=name
        )
        q = proj(heads, ("heads", "head_dim"), "q")(x)
        k = proj(kv_heads, ("kv_heads", "head_dim"), "k")(x)
        v = proj(kv_heads, ("kv_heads", "head_dim"), "v")(x)
        if cfg.qk_norm:  # per head, over head_dim, before RoPE (Qwen3, Gemma 3)
            q = Norm(cfg, "head_dim", name="q_norm")(q)
            k = Norm(cfg, "head_dim", name="k_norm")(k)
        if cfg.position_embedding == "rope":
            inv_freq = rope_inv_freq(cfg)
            if cfg.local_rope_theta is not None:
                inv_freq = pick(sliding, rope_inv_freq(cfg, local=True), inv_freq)
            rotated = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
            q, k = pick(rope, rotated[0], q), pick(rope, rotated[1], k)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        # Heads-major keys/values [B, H_kv, T, D_h]: the cache layout.
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        new_cache = None
        if layer_cache is not None:
            cache_k, cache_v = layer_cache
            start = (0, 0, index, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (k, v)
        full, window = masks
        mask = full if window is None else pick(sliding, window, full)
        rate = cfg.attention_dropout
        drop_rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        out = dot_product_attention(
            q,
            k,
            v,
            mask,
            cfg.compute_dtype,
            cfg.query_pre_attn_scalar,
            cfg.attn_logit_softcap,
            rate,
            drop_rng,
        )
        out = Projection(
            cfg,
            (cfg.hidden_size,),
            ("heads", "head_dim"),
            ("embed",),
            use_bias=cfg.attn_out_bias,
            name="o",
        )(out)
        return out, new_cache
