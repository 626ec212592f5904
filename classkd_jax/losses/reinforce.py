"""ClassKD's sequence-level estimator: score-function (REINFORCE) gradients of
the write-up's on-policy KD and misfeedback (`classkd.estimator='sequence'`).

On the student's own samples y ~ q(.|x) (B sequences, L_i response tokens,
the rows of the on-policy batch), with per-token *sample log-ratios*

    r_t = log q(y_t|y_<t,x) - log p(y_t|y_<t,x)        (KD, p = teacher)
    s_t = log q(y_t|y_<t,x) - log m(y_t|y_<t,x)        (misfeedback)

where m = c (classmate) for `misfeedback.variant='raw'` and the token-level
mixture m_t = alpha q_t + (1 - alpha) c_t for 'skew' (the skew's per-token
sample quantity summed over the sequence: a KL to the autoregressive model
whose every step is that mixture; per sample it is <= -log alpha per token,
so the misfeedback cannot run away; 'hinge' and 'sigmoid' are functions of
the whole vocabulary row or of a sigmoid, with no sequence-level log-ratio,
and are refused by the config check). The objectives, length-normalised as
MiniLLM normalises its returns (a long answer does not weigh more):

    J_kd  =  E_{y~q} [ f(y) ],   f(y) = (1/L(y)) sum_t r_t(theta)
    J_mis = -E_{y~q} [ h(y) ],   h(y) = (1/L(y)) sum_t s_t(theta)

For any J = E_{y~q_theta}[f_theta(y)] the exact gradient is

    grad J = E_q[ f(y) grad log q(y) ]          (score function)
           + E_q[ grad f_theta(y) ]             (pathwise, at fixed y)

and E_q[b grad log q(y)] = 0 for a constant b, so

    grad J = E_q[ (f(y) - b) sum_t grad log q(y_t)  +  (1/L) sum_t grad r_t ].

For KD grad r_t = grad log q(y_t) (p is frozen), and without the length
normalisation the pathwise term E_q[grad log q(y)] would vanish; with it,
E_q[grad log q(y) / L(y)] does not when lengths vary, so it is kept (for
'skew' grad s_t also carries the mixture's q). The per-sequence surrogate
whose gradient is that estimate, with sg = stop-gradient:

    S(y) = sg(f(y) - b) * sum_t log q(y_t)  +  (1/L) sum_t r_t(theta)

whose value would mix in the meaningless sg(f - b) log q(y); the code writes
log q as (log q - sg(log q)), 0 in value, the same gradient, so the value of
S is (1/L) sum_t r_t = f(y): the batch mean of S, which the step logs as its
loss term, is the sequence-level estimate itself.

Baseline: b = the batch mean of f (over the sequences with L > 0, the whole
global batch, before any micro-batch split), a simple variance reduction.
Since b includes the sequence's own f, the expected gradient is
(1 - 1/B) E_q[f grad log q] + pathwise: the score part is shrunk by the
factor 1 - 1/B (a bias of 3% of that part at B = 32; a leave-one-out mean
would remove it); with a constant `baseline` the estimate is unbiased
(tests/test_classkd_estimator.py checks this by enumeration).

The step's losses are token sums divided by the batch's N scored tokens, so
the per-sequence weights are written per token (`sequence_weights`):
adv = (f - b) * N / B and norm = N / (B * L), making
sum_tokens(adv * log q + norm * r) / N = (1/B) sum_i S(y_i).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

ESTIMATORS = ("token", "sequence")
SEQUENCE_MISFEEDBACK_VARIANTS = ("raw", "skew")

__all__ = [
    "ESTIMATORS",
    "SEQUENCE_MISFEEDBACK_VARIANTS",
    "misfeedback_sample_log_ratio",
    "reinforce_per_token",
    "sequence_weights",
]


def misfeedback_sample_log_ratio(
    logq: Array, logc: Array, *, variant: str = "raw", alpha: float = 0.1
) -> Array:
    """s_t = log q(y_t) - log m(y_t) at the sampled tokens: m = c ('raw') or
    alpha q + (1 - alpha) c ('skew', in log space, the gradient through both q's).

    Args:
      logq: `[...]` float32 log q(y_t), carries the gradient.
      logc: `[...]` float32 log c(y_t), the classmate's (frozen).
      variant: one of `SEQUENCE_MISFEEDBACK_VARIANTS`.
      alpha: the skew, in (0, 1).

    Returns:
      `[...]` float32.
    """
    if variant == "raw":
        return logq - logc
    if variant == "skew":
        log_m = jnp.logaddexp(math.log(alpha) + logq, math.log1p(-alpha) + logc)
        return logq - log_m
    raise ValueError(
        f"misfeedback variant {variant!r} has no sequence-level form; "
        f"choose one of {SEQUENCE_MISFEEDBACK_VARIANTS}"
    )


def sequence_weights(
    log_ratios: Mapping[str, Array], mask: Array, *, baseline: float | None = None
) -> dict[str, Array]:
    """Per-token weights of the sequence-level surrogate (module docstring).

    Args:
      log_ratios: name -> `[B, T]` float32 sample log-ratios (r_t, s_t); no
        gradient is taken through them.
      mask: `[B, T]` 0/1, the scored positions (a row is one sequence).
      baseline: None: the batch mean of each f; a number: that constant.

    Returns:
      `{name: [B, T] (f_i - b) * N / B, 'norm': [B, T] N / (B L_i)}`, zero off
      the mask, with N = sum(mask) and B the number of rows with L_i > 0.
    """
    mask = (mask != 0).astype(jnp.float32)
    lengths = jnp.sum(mask, axis=1)  # [B]
    seqs = lengths > 0
    n_tokens = jnp.sum(lengths)
    n_seqs = jnp.maximum(jnp.sum(seqs, dtype=jnp.float32), 1.0)
    safe_len = jnp.maximum(lengths, 1.0)
    out = {"norm": mask * (n_tokens / (n_seqs * safe_len))[:, None]}
    for name, r in log_ratios.items():
        f = jnp.sum(jax.lax.stop_gradient(r) * mask, axis=1) / safe_len  # [B]
        mean = jnp.sum(jnp.where(seqs, f, 0.0)) / n_seqs
        b = mean if baseline is None else jnp.float32(baseline)
        out[name] = mask * ((f - b) * n_tokens / n_seqs)[:, None]
    return out


def reinforce_per_token(
    logq: Array, log_ratio: Array, adv: Array, norm: Array
) -> tuple[Array, Array]:
    """The surrogate's per-token loss and value: `adv * (log q - sg(log q)) + norm * r`,
    `norm * r`. The score part is written as `log q - sg(log q)`, 0 in value
    and `grad log q` in gradient, so the loss's value is the sequence-level
    estimate itself (the step's logged `loss` means something).

    Args:
      logq: `[N]` float32 log q(y_t), with gradient.
      log_ratio: `[N]` float32 r_t (or s_t), with its pathwise gradient.
      adv, norm: `[N]` float32 from `sequence_weights` (no gradient).

    Returns:
      `(per_token_loss, per_token_value)`, `[N]` float32 each; summed over
      the tokens and divided by N they are the surrogate and f's batch mean.
    """
    adv, norm = jax.lax.stop_gradient(adv), jax.lax.stop_gradient(norm)
    value = norm * log_ratio
    score = logq - jax.lax.stop_gradient(logq)
    return adv * score + value, jax.lax.stop_gradient(value)
