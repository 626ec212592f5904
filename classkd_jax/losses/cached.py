"""Forward-KL-type losses from a stored teacher (`classkd_jax.teacher_cache`).

The teacher is not run: per scored position the cache holds W stored ids
(`ids [..., W] int32`, padding entries have weight 0), the teacher's
log-probabilities of those ids at the loss temperature (`teacher_logp
[..., W] float32`) and, for the sampled cache, how often each id was drawn in
N samples from the teacher (`counts [..., W]`). docs/teacher_cache.md gives
the formulas; in short, with p the teacher and q the student at temperature T:

- `sampled_kl_per_token`: sum_j w_j (log p_j - log q_j). With w_j = c_j / N
  (`weights(mode='counts')`) it is an unbiased estimate of KL(p || q), value
  and gradient: E[c_j / N] = p_j, and log p_j, log q_j are exact. With
  `mode='horvitz_thompson'`, w_j = p_j / (1 - (1 - p_j)^N) (the id's exact
  probability over its probability of being drawn at least once), also
  unbiased, and exact (w_j -> p_j) on the ids the teacher is sure of. With
  w = p on all V ids both equal the dense `forward_kl_per_token`.
- `sampled_skew_kl_per_token`: DistiLLM's KL(p || a p + (1 - a) q), the same
  expectation over y ~ p of a function of (p_y, q_y): unbiased in the same way.
- `topk_residual_kl_per_token`: the anchors' top-k with one residual bucket:
  exact on the k most likely ids, the remaining teacher mass r_p against the
  student's remaining mass r_q as one more "token". It is KL of the two
  (k + 1)-bucket distributions, a lower bound of KL(p || q) (the log-sum
  inequality), equal to it at k = V; its gradient puts no signal on how the
  tail is shaped, so its bias does not fall with more data or seeds.

All inputs have any leading shape `[...]`; logits `[..., V]` are promoted to
float32 before the temperature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classkd_jax.losses.divergences import log_probs

Array = jax.Array
WEIGHT_MODES = ("counts", "horvitz_thompson")

__all__ = [
    "WEIGHT_MODES",
    "sampled_kl_per_token",
    "sampled_skew_kl_per_token",
    "topk_residual_kl_per_token",
    "weights",
]


def weights(counts: Array, teacher_logp: Array, num_samples: int, mode: str = "counts") -> Array:
    """Per stored id the weight of its term, `[..., W]` float32 (0 on padding).

    Args:
      counts: `[..., W]` times each id was drawn (0 = padding).
      teacher_logp: `[..., W]` log p of each id at the loss temperature.
      num_samples: N, the draws per position.
      mode: 'counts' (c / N) or 'horvitz_thompson' (p / P(drawn at least once)).
    """
    drawn = counts > 0
    if mode == "counts":
        return jnp.where(drawn, counts.astype(jnp.float32) / float(num_samples), 0.0)
    if mode == "horvitz_thompson":
        p = jnp.exp(jnp.where(drawn, teacher_logp.astype(jnp.float32), 0.0))
        # P(drawn at least once in N) = 1 - (1 - p)^N, formed without cancellation.
        inclusion = -jnp.expm1(float(num_samples) * jnp.log1p(-jnp.minimum(p, 1.0 - 1e-7)))
        return jnp.where(drawn, p / jnp.where(drawn, inclusion, 1.0), 0.0)
    raise ValueError(f"cache weight mode={mode!r}; expected one of {WEIGHT_MODES}")


def _student_logq(student_logits: Array, ids: Array, temperature: float) -> Array:
    logq = log_probs(student_logits, temperature)
    return jnp.take_along_axis(logq, ids.astype(jnp.int32), axis=-1)


def sampled_kl_per_token(
    student_logits: Array,
    ids: Array,
    w: Array,
    teacher_logp: Array,
    *,
    temperature: float = 1.0,
) -> Array:
    """sum_j w_j (log p_j - log q_j): the stored-id estimate of KL(p || q).

    Args:
      student_logits: `[..., V]`.
      ids: `[..., W]` int32 stored ids.
      w: `[..., W]` float32 weights (`weights`); 0 on padding.
      teacher_logp: `[..., W]` float32 log p of the ids (padding: any value).
      temperature: the loss temperature (the cache's).

    Returns:
      `[...]` float32.
    """
    logq = _student_logq(student_logits, ids, temperature)
    keep = w > 0
    diff = jnp.where(keep, teacher_logp.astype(jnp.float32) - logq, 0.0)
    return jnp.sum(jnp.where(keep, w, 0.0) * diff, axis=-1)


def sampled_skew_kl_per_token(
    student_logits: Array,
    ids: Array,
    w: Array,
    teacher_logp: Array,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    stop_grad_mixture: bool = False,
) -> Array:
    """sum_j w_j (log p_j - log(a p_j + (1 - a) q_j)): the stored-id estimate of
    DistiLLM's skew KL(p || a p + (1 - a) q) (`skew_forward_kl_per_token`).

    Shapes as `sampled_kl_per_token`; `alpha` in (0, 1).
    """
    logq = _student_logq(student_logits, ids, temperature)
    if stop_grad_mixture:
        logq = jax.lax.stop_gradient(logq)
    keep = w > 0
    logp = jnp.where(keep, teacher_logp.astype(jnp.float32), 0.0)
    mix = jnp.logaddexp(logp + jnp.log(alpha), logq + jnp.log1p(-alpha))
    return jnp.sum(jnp.where(keep, w * (logp - mix), 0.0), axis=-1)


def topk_residual_kl_per_token(
    student_logits: Array,
    ids: Array,
    teacher_logp: Array,
    *,
    temperature: float = 1.0,
) -> Array:
    """KL between the (k + 1)-bucket coarsenings of p and q: the k stored ids
    exactly, everything else as one residual bucket.

    Args:
      student_logits: `[..., V]`.
      ids: `[..., k]` int32 distinct ids (the teacher's top k).
      teacher_logp: `[..., k]` float32 log p of the ids.
      temperature: the loss temperature.

    Returns:
      `[...]` float32, <= KL(p || q), equal at k = V.
    """
    logq_all = log_probs(student_logits, temperature)
    ids = ids.astype(jnp.int32)
    logq = jnp.take_along_axis(logq_all, ids, axis=-1)
    logp = teacher_logp.astype(jnp.float32)
    p = jnp.exp(logp)
    head = jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)
    # The student's residual log-mass over the ids not stored, from its own
    # log-probs (no 1 - sum cancellation): -inf when k = V.
    stored = jnp.put_along_axis(jnp.zeros(logq_all.shape, bool), ids, True, axis=-1, inplace=False)
    rest = jnp.where(stored, -jnp.inf, logq_all)
    any_rest = jnp.any(~stored, axis=-1)
    log_rq = jax.nn.logsumexp(jnp.where(any_rest[..., None], rest, 0.0), axis=-1)
    r_p = jnp.maximum(1.0 - jnp.sum(p, axis=-1), 0.0)
    has = (r_p > 0) & any_rest
    safe_rp = jnp.where(has, r_p, 1.0)
    tail = jnp.where(has, safe_rp * (jnp.log(safe_rp) - jnp.where(has, log_rq, 0.0)), 0.0)
    return head + tail
