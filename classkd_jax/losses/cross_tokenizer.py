"""Losses between a student and a teacher that use different tokenizers.

The host aligns both tokenizations into chunks (`classkd_jax.data.alignment`)
and the step gets index arrays of static shape; everything here is a pure
function of them. p = teacher, q = student; `S^p_k`, `S^q_k` are chunk k's
log-likelihoods under each model, the sums of the realised tokens' log-probs
within the chunk (docs/method.md has the formulas):

  ALM (default):  sum_k D_bin(exp(S^p_k / tau) || exp(S^q_k / tau)), D_bin the KL
                  between the Bernoulli distributions with those success
                  probabilities, tau the binarisation temperature (the ALM
                  reference's default is 100: long chunks' small probabilities
                  then still give a gradient, about (S^p - S^q) / (tau S^q));
  exact match:    KL(p~ || q~) at positions where one token of each side covers
                  the same bytes, p~ and q~ the two next-token distributions
                  renormalised over the vocabulary entries whose strings are
                  identical on both sides (GOLD's exact-match part);
  projected:      KL(P || q) at each chunk's first token, P the teacher's
                  next-token distribution carried onto the student's vocabulary
                  (each teacher token's probability goes to the student's first
                  token of its bytes: at a chunk start both sides begin at the
                  same byte, so that is the student's next token);
  ULD:            sum_i |sort(p)_i - sort(q)_i| (both sorted in decreasing
                  order, the shorter vocabulary padded with zeros) at each
                  chunk's first token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from classkd_jax.losses.divergences import log_probs

Array = jax.Array

__all__ = [
    "alm_chunk_terms",
    "binary_kl_from_log_probs",
    "chunk_sums",
    "exact_match_kl_per_token",
    "log1mexp",
    "projected_kl_per_token",
    "uld_per_token",
]


def chunk_sums(values: Array, chunk_ids: Array, num_chunks: int) -> Array:
    """Per row, the sum of `values` over the positions of each chunk.

    Args:
      values: `[B, T]` float (e.g. realised-token log-probs at target positions).
      chunk_ids: `[B, T]` int32 chunk of each position, -1 for none.
      num_chunks: K, static.

    Returns:
      `[B, K]` float32; chunk k's sum (0 where no position has id k).
    """
    ids = jnp.where(chunk_ids >= 0, chunk_ids, num_chunks)  # -1 -> a dropped slot
    onehot_sum = jnp.zeros((values.shape[0], num_chunks + 1), jnp.float32)
    rows = jnp.arange(values.shape[0])[:, None]
    return onehot_sum.at[rows, ids].add(values.astype(jnp.float32))[:, :num_chunks]


def log1mexp(x: Array) -> Array:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012); x is clipped
    below 0 so a chunk of probability 1 stays finite."""
    x = jnp.minimum(x, -1e-7)
    return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def binary_kl_from_log_probs(log_p: Array, log_q: Array) -> Array:
    """KL(Bern(p) || Bern(q)) from log p and log q (any shape, elementwise).

    = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)).
    """
    p = jnp.exp(log_p)
    return p * (log_p - log_q) + (1.0 - p) * (log1mexp(log_p) - log1mexp(log_q))


def alm_chunk_terms(
    student_logp: Array,
    teacher_logp: Array,
    student_chunk: Array,
    teacher_chunk: Array,
    chunk_mask: Array,
    binarization_temp: float = 1.0,
) -> tuple[Array, Array, Array, Array]:
    """ALM's per-chunk binarised KL and its gradient w.r.t. the student's chunk log-likelihood.

    Args:
      student_logp: `[B, T_s]` float32 log q(y_{t+1} | y_<=t) at each student position.
      teacher_logp: `[B, T_t]` float32 log p(y'_{t+1} | y'_<=t) at each teacher position.
      student_chunk: `[B, T_s]` int32 chunk of the token each position predicts (-1: none).
      teacher_chunk: `[B, T_t]` int32 the same on the teacher's side.
      chunk_mask: `[B, K]` 0/1 chunks that exist.
      binarization_temp: tau > 0; the Bernoulli success probabilities are
        exp(S / tau) (1: the chunks' own probabilities).

    Returns:
      `(loss [B, K], dloss/dS^q [B, K], S^q [B, K], S^p [B, K])`, float32,
      zero outside `chunk_mask`. The second lets a caller spread the chunk
      gradient back over the chunk's tokens (a surrogate whose gradient
      equals this loss's, `StepBuilder`'s ALM extras).
    """
    k = chunk_mask.shape[1]
    s_q = chunk_sums(student_logp, student_chunk, k)
    s_p = chunk_sums(teacher_logp, teacher_chunk, k)
    keep = chunk_mask != 0
    inv = 1.0 / float(binarization_temp)

    def divergence(sq):
        return jnp.where(keep, binary_kl_from_log_probs(s_p * inv, sq * inv), 0.0)

    def total(sq):
        return jnp.sum(divergence(sq))

    loss = divergence(s_q)
    grad = jnp.where(keep, jax.grad(total)(s_q), 0.0)
    return loss, grad, s_q, s_p


def exact_match_kl_per_token(
    student_logits: Array,
    teacher_logits: Array,
    student_ids: Array,
    teacher_ids: Array,
    *,
    temperature: float = 1.0,
) -> Array:
    """KL(p~ || q~) over the vocabulary entries both tokenizers spell identically.

    Args:
      student_logits: `[..., V_s]`; teacher_logits: `[..., V_t]`.
      student_ids, teacher_ids: `[M] int32`, entry m is one string's id on each side.
      temperature: loss temperature applied to both.

    Returns:
      `[...]` float32 >= 0; equals `forward_kl_per_token` when both id lists
      are `arange(V)` (one tokenizer).
    """
    q = jnp.take(student_logits.astype(jnp.float32), student_ids, axis=-1)
    p = jnp.take(teacher_logits.astype(jnp.float32), teacher_ids, axis=-1)
    logq, logp = log_probs(q, temperature), log_probs(p, temperature)
    prob = jnp.exp(logp)
    return jnp.sum(prob * jnp.where(prob > 0, logp - logq, 0.0), axis=-1)


def projected_kl_per_token(
    student_logits: Array,
    teacher_logits: Array,
    projection: Array,
    *,
    temperature: float = 1.0,
) -> Array:
    """KL(P || q): the teacher's next-token distribution carried onto the student's
    vocabulary, each teacher token's probability to the student's first token of
    its bytes, against the student's distribution over its whole vocabulary.

    Args:
      student_logits: `[..., V_s]`; teacher_logits: `[..., V_t]`.
      projection: `[V_t] int32`, the student id each teacher id goes to
        (`data.vocab_map.first_token_map`); -1: dropped (P is renormalised over
        what is kept); cut or padded with -1 to the teacher logits' width.
      temperature: loss temperature applied to both.

    Returns:
      `[...]` float32 >= 0; equals `forward_kl_per_token` when `projection` is
      `arange(V)` (one tokenizer).
    """
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    p = jnp.exp(log_probs(teacher_logits, temperature))
    projection = jnp.pad(projection[:v_t], (0, max(v_t - projection.shape[0], 0)),
                         constant_values=-1)  # fmt: skip
    slot = jnp.where(projection < 0, v_s, projection)  # -1 goes to a slot that is cut off
    mass = jnp.zeros((*p.shape[:-1], v_s + 1), jnp.float32).at[..., slot].add(p)[..., :v_s]
    mass = mass / jnp.maximum(jnp.sum(mass, axis=-1, keepdims=True), 1e-30)
    logq = log_probs(student_logits, temperature)
    logm = jnp.log(jnp.where(mass > 0, mass, 1.0))
    return jnp.sum(jnp.where(mass > 0, mass * (logm - logq), 0.0), axis=-1)


def uld_per_token(
    student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0
) -> Array:
    """ULD's closed-form Wasserstein-1 between two distributions over unrelated vocabularies.

    Args:
      student_logits: `[..., V_s]`; teacher_logits: `[..., V_t]`.
      temperature: loss temperature applied to both.

    Returns:
      `[...]` float32: sum_i |sort(q)_i - sort(p)_i|, each sorted decreasing,
      the shorter zero-padded to the longer.
    """
    q = jnp.exp(log_probs(student_logits, temperature))
    p = jnp.exp(log_probs(teacher_logits, temperature))
    width = max(q.shape[-1], p.shape[-1])

    def sorted_padded(x):
        pad = [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]
        return -jnp.sort(-jnp.pad(x, pad), axis=-1)

    return jnp.sum(jnp.abs(sorted_padded(q) - sorted_padded(p)), axis=-1)
