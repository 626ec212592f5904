"""What the cache stores per scored position, from the teacher's logits (pure, jittable).

    stats = position_stats(logits, targets, keys, temperature=1.0, num_samples=16, top_k=0)

For M positions with teacher logits `[M, V]` (float32, the real vocabulary):
  ids       [M, N] int32    the distinct ids among N draws from p_T (most
                            drawn first), padded with 0
  counts    [M, N] uint16   how often each was drawn (0 = padding); sums to N
  logp      [M, N] float32  log p_T of each stored id (0 on padding)
  target_logp [M] float32   log p_T of the dataset's next token
  lse       [M] float32     logsumexp(logits / T), the log-normaliser
  topk_ids  [M, k] int32, topk_logp [M, k] float32   (top_k > 0 only)
with p_T = softmax(logits / T) at the loss temperature T. N draws have at most
N distinct ids, so the width N is exact (no draw is dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def unique_counts(draws: Array) -> tuple[Array, Array]:
    """Distinct ids and counts of each row of draws, fixed width.

    Args:
      draws: `[M, N]` int32 ids.

    Returns:
      (ids `[M, N]` int32, counts `[M, N]` int32): the distinct ids of each row,
      most drawn first (ties: smaller id first), then padding (id 0, count 0).
    """
    s = jnp.sort(draws, axis=-1)
    n = s.shape[-1]
    first = jnp.concatenate([jnp.ones_like(s[:, :1], bool), s[:, 1:] != s[:, :-1]], axis=-1)
    # A run's count is the distance from its start to the next run's start.
    col = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), s.shape)
    starts = jnp.where(first, col, n)
    after = jnp.concatenate([starts[:, 1:], jnp.full_like(starts[:, :1], n)], axis=-1)
    next_start = jax.lax.cummin(after, axis=1, reverse=True)
    counts = jnp.where(first, next_start - col, 0)
    order = jnp.argsort(-counts, axis=-1, stable=True)
    ids = jnp.take_along_axis(jnp.where(first, s, 0), order, axis=-1)
    return ids.astype(jnp.int32), jnp.take_along_axis(counts, order, axis=-1)


def draw(keys: Array, logp: Array, num_samples: int) -> Array:
    """`num_samples` ids per row from exp(logp) by inverse CDF, `[M, N]` int32.

    O(N log V) a row (a Gumbel draw per id would be O(N V)); the float32 CDF
    misplaces a draw only within ~1e-7 of a bucket boundary.
    """
    p = jnp.exp(logp)
    cdf = jnp.cumsum(p, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (num_samples,)))(keys) * cdf[:, -1:]
    ids = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf, u)
    return jnp.minimum(ids, logp.shape[-1] - 1).astype(jnp.int32)


def position_stats(
    logits: Array,
    targets: Array,
    keys: Array,
    *,
    temperature: float,
    num_samples: int,
    top_k: int = 0,
) -> dict[str, Array]:
    """The stored values of M positions (module docstring).

    Args:
      logits: `[M, V]` teacher logits (any float dtype; float32 inside).
      targets: `[M]` int32 the dataset's next tokens.
      keys: `[M]` PRNG keys, one per position (so a position's draws do not
        depend on how positions are batched).
      temperature: the loss temperature T.
      num_samples: N draws per position.
      top_k: also store the k most likely ids (0: none).
    """
    z = logits.astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = z - lse[:, None]
    ids, counts = unique_counts(draw(keys, logp, num_samples))
    out = {
        "ids": ids,
        "counts": counts.astype(jnp.uint16),
        "logp": jnp.where(counts > 0, jnp.take_along_axis(logp, ids, axis=-1), 0.0),
        "target_logp": jnp.take_along_axis(logp, targets[:, None].astype(jnp.int32), -1)[:, 0],
        "lse": lse,
    }
    if top_k:
        top_logp, top_ids = jax.lax.top_k(logp, top_k)
        out["topk_ids"] = top_ids.astype(jnp.int32)
        out["topk_logp"] = top_logp
    return out
