"""ClassKD's misfeedback term and its bounded variants.

The write-up's objective on the student's own samples y ~ q is the
sequence-level -E_{y~q}[log q(y|x)/c(y|x)], c = classmate. What the train step
optimises is its token-level surrogate -sum_t KL(q_t || c_t): the exact KL over
the vocabulary at each position t of a sampled sequence, given its sampled
prefix y_<t, with no gradient through the sampling (as GKD's on-policy loss,
and as ClassKD's own on-policy KD term). The two are equal in value, not in
gradient. By the chain rule E_y[sum_t KL(q_t || c_t)] = E_y[log q(y)/c(y)], so
the surrogate's expectation is the sequence-level objective. Its gradient
E_y[sum_t grad KL(q_t || c_t)] is only the part at fixed prefixes; the
sequence-level gradient also has the score-function term
E_y[sum_t grad log q(y_t|y_<t) * sum_{s>t} KL(q_s || c_s)], how changing token
t changes the prefixes every later position is scored at (the long-horizon
term), which the surrogate drops. MiniLLM's policy gradient estimates that
term; GKD does not, nor does ClassKD's default `classkd.estimator='token'`.
`classkd.estimator='sequence'` estimates the whole sequence-level gradient
by REINFORCE (`classkd_jax/losses/reinforce.py`, for 'raw' and 'skew').
Whether it matters for ClassKD is an open question, not settled here.
Minimising the misfeedback pushes the student away from the classmate. The raw form is
unbounded below: the student can always gain by moving mass to entries where
c is tiny. Variants (``variant=``):

- ``"raw"``: -KL(q || c). Unbounded below.
- ``"skew"``: -KL(q || alpha q + (1 - alpha) c), in [log alpha, 0] (-2.30 at
  alpha = 0.1): the mixture never drops below alpha q, so the log-ratio is
  capped at -log alpha.
- ``"hinge"``: max(0, margin - KL(q || c)), in [0, margin]: push away from the
  classmate until the KL reaches ``margin`` nats, then no gradient.
- ``"sigmoid"``: DPO-like, -log sigmoid(beta * (log q(y_t) - log c(y_t))) on the
  sampled next tokens y_t (``targets``), in [0, inf), bounded below by 0.

The functions default to ``"raw"``, the write-up's formula as specified; the
*training* default (``DEFAULT_MISFEEDBACK_VARIANT``, used by
``classkd_student_loss`` and meant for configs) is ``"skew"`` (alpha = 0.1),
with a small weight (~0.1).
Measured by ``benchmarks/bench_misfeedback.py`` (numbers in
benchmarks/README.md): free student logits (256 positions, V = 64) optimised
with Adam on KD + weight * misfeedback; a classmate with KL(p || c) = 0.79.

- ``raw`` runs away: at weight 1 with forward-KL KD its value falls to -7.4
  and is still falling after 2000 steps, KL(p || q) to the teacher 2.3; with
  reverse-KL KD the student collapses onto tokens maximising c/p (KL(p || q)
  5.8 after 500 steps, 7.8 after 2000).
- ``skew`` stays in [log alpha, 0] whatever the classmate does (min -1.46),
  so what the student can gain from it is capped (KL(p || q) 0.27 / 2.3 at
  weight 1 with forward / reverse KD, against 2.3 / 7.8 for ``raw``); its
  gradient never vanishes and it has no scale to tune.
- ``hinge`` is bounded too but stops at the margin (KL(q || c) 1.06 at
  margin 1); the margin must be set against a KL scale that varies by task.
- ``sigmoid`` moves the student *towards* the classmate: on the student's own
  samples its gradient is E_q[sigma(-beta r) grad log q], which favours tokens
  the classmate likes (KL(q || c) 0.60-0.62 against 0.78 for KD alone).

At weight 0.1, ``skew`` raises KL(q || c) from 0.78 to 0.87 at a cost of
0.004 nats of KL(p || q), ``raw`` to 0.93 at 0.008.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from classkd_jax.losses.divergences import (
    _check_pair,
    _check_unit_interval,
    _kl_from_log_probs,
    _log_mixture,
    log_probs,
    masked_mean,
)

Array = jax.Array

MISFEEDBACK_VARIANTS = ("raw", "skew", "hinge", "sigmoid")
DEFAULT_MISFEEDBACK_VARIANT = "skew"

__all__ = [
    "DEFAULT_MISFEEDBACK_VARIANT",
    "MISFEEDBACK_VARIANTS",
    "misfeedback",
    "misfeedback_lower_bound",
    "misfeedback_per_token",
]


def misfeedback_per_token(
    student_logits: Array,
    classmate_logits: Array,
    *,
    temperature: float = 1.0,
    variant: str = "raw",
    alpha: float = 0.1,
    margin: float = 1.0,
    beta: float = 1.0,
    targets: Array | None = None,
) -> Array:
    """Per-token misfeedback loss (to minimise) on the student's own samples.

    Args:
      student_logits: ``[..., V]`` (q), carries the gradient.
      classmate_logits: ``[..., V]`` (c), treated as given (stop it upstream).
      temperature: loss temperature applied to both.
      variant: one of :data:`MISFEEDBACK_VARIANTS` (see the module docstring).
      alpha: skew of the ``"skew"`` variant, in (0, 1).
      margin: KL margin in nats of the ``"hinge"`` variant (>= 0).
      beta: inverse scale of the ``"sigmoid"`` variant (> 0).
      targets: ``[...]`` int, the sampled next tokens (logits at t score token
        t + 1); required by ``"sigmoid"`` only.

    Returns:
      ``[...]`` float32.
    """
    _check_pair(student_logits, classmate_logits, "classmate_logits")
    logq = log_probs(student_logits, temperature)
    logc = log_probs(classmate_logits, temperature)
    if variant == "raw":
        return -_kl_from_log_probs(logq, logc)
    if variant == "skew":
        _check_unit_interval("alpha", alpha, open_left=True, open_right=True)
        return -_kl_from_log_probs(logq, _log_mixture(logq, logc, alpha))
    if variant == "hinge":
        if margin < 0:
            raise ValueError(f"misfeedback margin must be >= 0, got {margin!r}")
        return jax.nn.relu(margin - _kl_from_log_probs(logq, logc))
    if variant == "sigmoid":
        if targets is None:
            raise ValueError("misfeedback variant 'sigmoid' needs targets (the sampled tokens)")
        if targets.shape != logq.shape[:-1]:
            raise ValueError(f"targets {targets.shape} must be logits.shape[:-1] {logq.shape[:-1]}")
        if not beta > 0:
            raise ValueError(f"misfeedback beta must be > 0, got {beta!r}")
        idx = targets[..., None].astype(jnp.int32)
        log_ratio = jnp.take_along_axis(logq, idx, axis=-1) - jnp.take_along_axis(logc, idx, -1)
        return -jax.nn.log_sigmoid(beta * log_ratio[..., 0])
    raise ValueError(
        f"unknown misfeedback variant {variant!r}; choose one of {MISFEEDBACK_VARIANTS}"
    )


def misfeedback(
    student_logits: Array,
    classmate_logits: Array,
    mask: Array,
    *,
    temperature: float = 1.0,
    variant: str = "raw",
    alpha: float = 0.1,
    margin: float = 1.0,
    beta: float = 1.0,
    targets: Array | None = None,
) -> Array:
    """Masked token mean of :func:`misfeedback_per_token`.

    With the default ``variant="raw"`` this is the write-up's -KL(q || c); the
    training default ``"skew"`` is -KL(q || alpha q + (1 - alpha) c) in
    [log alpha, 0].

    Args:
      student_logits: ``[B, T, V]``.
      classmate_logits: ``[B, T, V]``.
      mask: ``[B, T]`` 0/1, the scored positions of the student's samples.
      temperature, variant, alpha, margin, beta, targets: see the per-token form.

    Returns:
      Scalar float32.
    """
    per_token = misfeedback_per_token(
        student_logits,
        classmate_logits,
        temperature=temperature,
        variant=variant,
        alpha=alpha,
        margin=margin,
        beta=beta,
        targets=targets,
    )
    return masked_mean(per_token, mask)


def misfeedback_lower_bound(variant: str, *, alpha: float = 0.1) -> float:
    """The value below which the variant cannot go (``-inf`` for ``"raw"``)."""
    return {"raw": -math.inf, "skew": math.log(alpha), "hinge": 0.0, "sigmoid": 0.0}[variant]
