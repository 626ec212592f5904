"""Token-level divergences between next-token distributions.

Notation: p = teacher, q = student, c = classmate; all distributions are over
the vocabulary axis (last axis) and computed in float32 from logits divided by
the loss temperature. Every ``*_per_token`` function accepts logits of any
leading shape ``[..., V]`` and returns ``[...]`` float32 (so the fused chunked
path can call it on ``[C, V]`` chunks); the un-suffixed functions take
``[B, T, V]`` logits and a ``[B, T]`` 0/1 mask and return the masked token mean
(sum over masked positions / number of masked positions, 0 when none).

Numerics (the traps reference implementations fell into):
- logits are promoted to float32 *before* the temperature and the softmax, so a
  bfloat16 teacher against a float32 student cannot give a negative KL;
- mixtures are formed in probability space via ``logaddexp`` of log-probs plus
  log-weights, never by mixing log-probs;
- a vocabulary entry whose left-hand probability is exactly 0 (for instance a
  ``-inf`` logit on a padded or masked entry) contributes exactly 0, with a
  finite gradient, instead of ``0 * -inf = nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "DIVERGENCES",
    "forward_kl",
    "forward_kl_per_token",
    "generalized_jsd",
    "generalized_jsd_per_token",
    "get_divergence",
    "log_probs",
    "masked_mean",
    "masked_sum_and_count",
    "reverse_kl",
    "reverse_kl_per_token",
    "skew_forward_kl",
    "skew_forward_kl_per_token",
    "skew_reverse_kl",
    "skew_reverse_kl_per_token",
    "total_variation",
    "total_variation_per_token",
]


def _check_unit_interval(name: str, value: float, *, open_left: bool, open_right: bool) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a float in the interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a Python float (a static config value), got {value!r}")
    lo_ok = value > 0 if open_left else value >= 0
    hi_ok = value < 1 if open_right else value <= 1
    if not (lo_ok and hi_ok):
        lo, hi = "(" if open_left else "[", ")" if open_right else "]"
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {value!r}")


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def log_probs(logits: Array, temperature: float = 1.0) -> Array:
    """Log-softmax over the last axis in float32.

    Args:
      logits: ``[..., V]`` any float dtype (bf16 is promoted first).
      temperature: loss temperature (> 0), kept separate from any sampling temperature.

    Returns:
      ``[..., V]`` float32 log-probabilities (``-inf`` where the logit is ``-inf``).
    """
    _check_temperature(temperature)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _kl_from_log_probs(logp_a: Array, logp_b: Array) -> Array:
    """sum_v a (log a - log b), with entries where a == 0 contributing exactly 0."""
    a = jnp.exp(logp_a)
    # The `where` keeps 0 * (-inf - -inf) out of both the value and the gradient.
    diff = jnp.where(a > 0, logp_a - logp_b, 0.0)
    return jnp.sum(a * diff, axis=-1)


def _log_mixture(logp_a: Array, logp_b: Array, weight_a: float) -> Array:
    """log(w * a + (1 - w) * b) computed in probability space, w in (0, 1).

    A hand-written logsumexp rather than ``jnp.logaddexp``: where both entries
    are -inf (a masked vocabulary entry in both models) the value is -inf and,
    through the double ``where``, the gradient stays 0 instead of nan.
    """
    x = logp_a + math.log(weight_a)
    y = logp_b + math.log1p(-weight_a)
    top = jax.lax.stop_gradient(jnp.maximum(x, y))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.exp(x - top) + jnp.exp(y - top)
    positive = total > 0
    return jnp.where(positive, top + jnp.log(jnp.where(positive, total, 1.0)), -jnp.inf)


def _check_pair(student_logits: Array, other_logits: Array, other_name: str) -> None:
    if student_logits.shape != other_logits.shape:
        raise ValueError(
            f"student_logits {student_logits.shape} and {other_name} {other_logits.shape} "
            "must have the same shape; slice padded vocabularies to the shared real "
            "vocabulary first (classkd_jax.losses.shared_vocab_logits)"
        )


def forward_kl_per_token(
    student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0
) -> Array:
    """KL(p || q) = sum_v p_v (log p_v - log q_v).

    Args:
      student_logits: ``[..., V]`` (q).
      teacher_logits: ``[..., V]`` (p).
      temperature: loss temperature applied to both.

    Returns:
      ``[...]`` float32, >= 0.
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    logq = log_probs(student_logits, temperature)
    logp = log_probs(teacher_logits, temperature)
    return _kl_from_log_probs(logp, logq)


def reverse_kl_per_token(
    student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0
) -> Array:
    """KL(q || p) = sum_v q_v (log q_v - log p_v); ``[..., V]`` -> ``[...]`` float32."""
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    logq = log_probs(student_logits, temperature)
    logp = log_probs(teacher_logits, temperature)
    return _kl_from_log_probs(logq, logp)


def generalized_jsd_per_token(
    student_logits: Array, teacher_logits: Array, *, beta: float = 0.5, temperature: float = 1.0
) -> Array:
    """GKD's generalized JSD, TRL's ``GKDTrainer.generalized_jsd_loss`` convention.

    m = beta * p + (1 - beta) * q and JSD = beta * KL(p || m) + (1 - beta) * KL(q || m)
    for 0 < beta < 1. As in TRL, beta == 0 is exactly KL(p || q) and beta == 1 is
    exactly KL(q || p) (the formula itself vanishes at both ends).

    Args:
      student_logits: ``[..., V]`` (q).
      teacher_logits: ``[..., V]`` (p).
      beta: Python float in [0, 1].
      temperature: loss temperature.

    Returns:
      ``[...]`` float32.
    """
    _check_unit_interval("beta", beta, open_left=False, open_right=False)
    if beta == 0:
        return forward_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    if beta == 1:
        return reverse_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    logq = log_probs(student_logits, temperature)
    logp = log_probs(teacher_logits, temperature)
    logm = _log_mixture(logp, logq, beta)
    return beta * _kl_from_log_probs(logp, logm) + (1 - beta) * _kl_from_log_probs(logq, logm)


def skew_forward_kl_per_token(
    student_logits: Array,
    teacher_logits: Array,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    stop_grad_mixture: bool = False,
) -> Array:
    """DistiLLM's skew KL: KL(p || alpha * p + (1 - alpha) * q).

    DistiLLM's code returns the cross-entropy -sum_v p log m, which differs from
    this KL by the teacher entropy (a constant in the student's parameters).

    Args:
      student_logits: ``[..., V]`` (q).
      teacher_logits: ``[..., V]`` (p).
      alpha: skew in (0, 1); lies in [0, -log alpha].
      temperature: loss temperature.
      stop_grad_mixture: stop the gradient through the q inside the mixture
        (DistiLLM-2 style); DistiLLM lets it flow (default).

    Returns:
      ``[...]`` float32.
    """
    _check_unit_interval("alpha", alpha, open_left=True, open_right=True)
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    logq = log_probs(student_logits, temperature)
    logp = log_probs(teacher_logits, temperature)
    logq_mix = jax.lax.stop_gradient(logq) if stop_grad_mixture else logq
    return _kl_from_log_probs(logp, _log_mixture(logp, logq_mix, alpha))


def skew_reverse_kl_per_token(
    student_logits: Array,
    teacher_logits: Array,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    stop_grad_mixture: bool = False,
) -> Array:
    """DistiLLM's skew reverse KL: KL(q || alpha * q + (1 - alpha) * p).

    Args:
      student_logits: ``[..., V]`` (q).
      teacher_logits: ``[..., V]`` (p).
      alpha: skew in (0, 1); the value lies in [0, -log alpha].
      temperature: loss temperature.
      stop_grad_mixture: stop the gradient through the q inside the mixture
        (DistiLLM-2 detaches it); DistiLLM lets it flow (default).

    Returns:
      ``[...]`` float32.
    """
    _check_unit_interval("alpha", alpha, open_left=True, open_right=True)
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    logq = log_probs(student_logits, temperature)
    logp = log_probs(teacher_logits, temperature)
    logq_mix = jax.lax.stop_gradient(logq) if stop_grad_mixture else logq
    return _kl_from_log_probs(logq, _log_mixture(logq_mix, logp, alpha))


def total_variation_per_token(
    student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0
) -> Array:
    """0.5 * sum_v |p_v - q_v|; ``[..., V]`` -> ``[...]`` float32 in [0, 1]."""
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    q = jnp.exp(log_probs(student_logits, temperature))
    p = jnp.exp(log_probs(teacher_logits, temperature))
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def masked_sum_and_count(per_token: Array, mask: Array) -> tuple[Array, Array]:
    """(sum of ``per_token`` over positions where ``mask`` != 0, number of such positions).

    ``where`` rather than a product, so a non-finite value at a masked-out
    position (garbage logits on padding) cannot leak into the sum.

    Args:
      per_token: ``[B, T]`` float.
      mask: ``[B, T]`` 0/1 (any dtype).

    Returns:
      Two float32 scalars. Sum-and-count pairs keep token means exact across
      devices, hosts and gradient accumulation.
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"per-token values {per_token.shape} and mask {mask.shape} differ")
    keep = mask != 0
    total = jnp.sum(jnp.where(keep, per_token.astype(jnp.float32), 0.0))
    return total, jnp.sum(keep, dtype=jnp.float32)


def masked_mean(per_token: Array, mask: Array) -> Array:
    """Masked token mean, 0 (not nan) when the mask is empty, as TRL's ``clamp_min(1)``."""
    total, count = masked_sum_and_count(per_token, mask)
    return total / jnp.maximum(count, 1.0)


def forward_kl(
    student_logits: Array, teacher_logits: Array, mask: Array, *, temperature: float = 1.0
) -> Array:
    """Masked mean of KL(p || q). Logits ``[B, T, V]``, mask ``[B, T]``; scalar float32."""
    per_token = forward_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    return masked_mean(per_token, mask)


def reverse_kl(
    student_logits: Array, teacher_logits: Array, mask: Array, *, temperature: float = 1.0
) -> Array:
    """Masked mean of KL(q || p). Logits ``[B, T, V]``, mask ``[B, T]``; scalar float32."""
    per_token = reverse_kl_per_token(student_logits, teacher_logits, temperature=temperature)
    return masked_mean(per_token, mask)


def generalized_jsd(
    student_logits: Array,
    teacher_logits: Array,
    mask: Array,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Array:
    """Masked mean of the generalized JSD; equals TRL's ``generalized_jsd_loss`` (batchmean).

    See :func:`generalized_jsd_per_token`. Logits ``[B, T, V]``, mask ``[B, T]``.
    """
    per_token = generalized_jsd_per_token(
        student_logits, teacher_logits, beta=beta, temperature=temperature
    )
    return masked_mean(per_token, mask)


def skew_forward_kl(
    student_logits: Array,
    teacher_logits: Array,
    mask: Array,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    stop_grad_mixture: bool = False,
) -> Array:
    """Masked mean of DistiLLM's SKL, KL(p || alpha p + (1 - alpha) q); see the per-token form."""
    per_token = skew_forward_kl_per_token(
        student_logits,
        teacher_logits,
        alpha=alpha,
        temperature=temperature,
        stop_grad_mixture=stop_grad_mixture,
    )
    return masked_mean(per_token, mask)


def skew_reverse_kl(
    student_logits: Array,
    teacher_logits: Array,
    mask: Array,
    *,
    alpha: float = 0.1,
    temperature: float = 1.0,
    stop_grad_mixture: bool = False,
) -> Array:
    """Masked mean of DistiLLM's SRKL, KL(q || alpha q + (1 - alpha) p); see the per-token form."""
    per_token = skew_reverse_kl_per_token(
        student_logits,
        teacher_logits,
        alpha=alpha,
        temperature=temperature,
        stop_grad_mixture=stop_grad_mixture,
    )
    return masked_mean(per_token, mask)


def total_variation(
    student_logits: Array, teacher_logits: Array, mask: Array, *, temperature: float = 1.0
) -> Array:
    """Masked mean of 0.5 * sum_v |p - q|. Logits ``[B, T, V]``, mask ``[B, T]``."""
    per_token = total_variation_per_token(student_logits, teacher_logits, temperature=temperature)
    return masked_mean(per_token, mask)


DIVERGENCES: MappingProxyType[str, Callable[..., Array]] = MappingProxyType(
    {
        "forward_kl": forward_kl_per_token,
        "reverse_kl": reverse_kl_per_token,
        "generalized_jsd": generalized_jsd_per_token,
        "skew_forward_kl": skew_forward_kl_per_token,
        "skew_reverse_kl": skew_reverse_kl_per_token,
        "total_variation": total_variation_per_token,
    }
)
"""Per-token teacher-student divergences by config name: ``fn(student, teacher, **kw) -> [...]``."""


def get_divergence(name: str) -> Callable[..., Array]:
    """The per-token divergence called ``name`` (a key of :data:`DIVERGENCES`)."""
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise ValueError(
            f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}"
        ) from None
