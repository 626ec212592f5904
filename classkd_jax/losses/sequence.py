"""Sequence objectives built on the token divergences.

Alignment: logits at position t predict token t + 1. Every objective here takes
the *token-space* response mask (1 on response tokens: dataset responses or
generated tokens up to and including EOS) and shifts it with the labels via
:func:`next_token_targets`, so a response of exactly one token is scored at
exactly one position (the last prompt position). Shapes stay ``[B, T]``; the
last position is never scored. All values are float32 and means are over the
scored positions (0 when there are none).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from classkd_jax.losses.divergences import (
    get_divergence,
    log_probs,
    masked_mean,
    reverse_kl_per_token,
)
from classkd_jax.losses.misfeedback import DEFAULT_MISFEEDBACK_VARIANT, misfeedback_per_token

Array = jax.Array

__all__ = [
    "classkd_student_loss",
    "classmate_loss",
    "cross_entropy",
    "cross_entropy_per_token",
    "distillation_loss",
    "minillm_advantages",
    "minillm_importance_weights",
    "minillm_loss",
    "minillm_pg_per_token",
    "minillm_pretrain_loss",
    "minillm_rewards",
    "next_token_targets",
    "off_policy_kd",
    "on_policy_kd",
    "token_log_probs",
]


def next_token_targets(tokens: Array, response_mask: Array) -> tuple[Array, Array]:
    """Shift tokens and the response mask so position t is scored on token t + 1.

    Args:
      tokens: ``[B, T]`` int, prompt + response (+ padding).
      response_mask: ``[B, T]`` 0/1 in token space, 1 on tokens to predict.

    Returns:
      ``targets [B, T] int32`` (``targets[:, t] = tokens[:, t + 1]``, 0 at the end)
      and ``loss_mask [B, T] float32`` (``response_mask[:, t + 1]``, 0 at the end).
    """
    if tokens.shape != response_mask.shape or tokens.ndim != 2:
        raise ValueError(
            f"tokens {tokens.shape} and response_mask {response_mask.shape} must be [B, T]"
        )
    targets = jnp.pad(tokens[:, 1:].astype(jnp.int32), ((0, 0), (0, 1)))
    loss_mask = jnp.pad((response_mask[:, 1:] != 0).astype(jnp.float32), ((0, 0), (0, 1)))
    return targets, loss_mask


def token_log_probs(logits: Array, targets: Array, *, temperature: float = 1.0) -> Array:
    """log softmax(logits / temperature)[targets]: ``[..., V]``, ``[...]`` -> ``[...]`` f32."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets {targets.shape} must equal logits.shape[:-1] {logits.shape[:-1]}"
        )
    logp = log_probs(logits, temperature)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy_per_token(logits: Array, targets: Array, *, temperature: float = 1.0) -> Array:
    """-log q(targets); ``[..., V]`` logits, ``[...]`` int targets -> ``[...]`` float32."""
    return -token_log_probs(logits, targets, temperature=temperature)


def cross_entropy(logits: Array, targets: Array, mask: Array, *, temperature: float = 1.0) -> Array:
    """SFT loss: masked mean of -log q(y_{t+1} | y_<=t). ``[B, T, V]``, ``[B, T]``, ``[B, T]``."""
    return masked_mean(cross_entropy_per_token(logits, targets, temperature=temperature), mask)


def distillation_loss(
    student_logits: Array,
    teacher_logits: Array,
    mask: Array,
    *,
    divergence: str = "forward_kl",
    **kwargs: Any,
) -> Array:
    """Masked mean of the named divergence D(p_t, q_t) on already-aligned positions.

    Args:
      student_logits, teacher_logits: ``[B, T, V]``.
      mask: ``[B, T]`` scored positions (shifted).
      divergence: a key of ``DIVERGENCES``.
      **kwargs: the divergence's options (temperature, beta, alpha, ...).
    """
    per_token = get_divergence(divergence)(student_logits, teacher_logits, **kwargs)
    return masked_mean(per_token, mask)


def off_policy_kd(
    student_logits: Array,
    teacher_logits: Array,
    tokens: Array,
    response_mask: Array,
    *,
    divergence: str = "forward_kl",
    **kwargs: Any,
) -> Array:
    """Word-level KD on dataset (or teacher-sampled) responses.

    L = (1/N) sum_{t: y_{t+1} in response} D(p(. | y_<=t), q(. | y_<=t)); with
    the default forward KL this is the write-up's L_off at token level.

    Args:
      student_logits, teacher_logits: ``[B, T, V]`` on ``tokens``.
      tokens: ``[B, T]`` int prompt + response.
      response_mask: ``[B, T]`` 0/1 in token space (1 on response tokens).
      divergence, **kwargs: see :func:`distillation_loss`.
    """
    _, loss_mask = next_token_targets(tokens, response_mask)
    return distillation_loss(
        student_logits, teacher_logits, loss_mask, divergence=divergence, **kwargs
    )


def on_policy_kd(
    student_logits: Array,
    teacher_logits: Array,
    sample_tokens: Array,
    sample_mask: Array,
    *,
    divergence: str = "reverse_kl",
    **kwargs: Any,
) -> Array:
    """KD on the student's own samples (GKD with lambda = 1, ClassKD's L_on).

    The write-up's L_on = E_{y~q}[log q(y)/p(y)] (its printed sign is flipped)
    is, per token on student samples, KL(q_t || p_t): hence the default
    ``reverse_kl``; any divergence can be chosen. No gradient flows through
    the sampling. ``sample_mask`` marks generated tokens (through EOS) in token
    space and is shifted here exactly as for dataset responses.
    """
    _, loss_mask = next_token_targets(sample_tokens, sample_mask)
    return distillation_loss(
        student_logits, teacher_logits, loss_mask, divergence=divergence, **kwargs
    )


def classmate_loss(
    classmate_logits: Array,
    teacher_logits: Array,
    tokens: Array,
    response_mask: Array,
    *,
    divergence: str = "forward_kl",
    **kwargs: Any,
) -> Array:
    """The classmate's loss: off-policy KD from the teacher only.

    L_classmate = E_{y~p or dataset} sum_t D(p_t, c_t); never on the classmate's
    (or the student's) own samples, so it does not outpace the student.
    """
    return off_policy_kd(
        classmate_logits, teacher_logits, tokens, response_mask, divergence=divergence, **kwargs
    )


def classkd_student_loss(
    student_logits: Array,
    teacher_logits: Array,
    classmate_logits: Array,
    sample_tokens: Array,
    sample_mask: Array,
    *,
    divergence: str = "reverse_kl",
    misfeedback_weight: float = 0.1,
    misfeedback_variant: str = DEFAULT_MISFEEDBACK_VARIANT,
    temperature: float = 1.0,
    misfeedback_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Array, dict[str, Array]]:
    """ClassKD student objective on its own samples: KD to the teacher + misfeedback.

    L = mean_t D(p_t, q_t) + w * mean_t M(q_t, c_t), where M is the misfeedback
    variant (default skewed -KL(q || 0.1 q + 0.9 c), weight 0.1: see
    benchmarks/README.md for the measurement); the classmate is held fixed
    (stop_gradient) in this term.

    Returns:
      ``(loss, {"kd": ..., "misfeedback": ...})`` scalars float32.
    """
    targets, loss_mask = next_token_targets(sample_tokens, sample_mask)
    kd = distillation_loss(
        student_logits,
        teacher_logits,
        loss_mask,
        divergence=divergence,
        temperature=temperature,
        **kwargs,
    )
    mf = masked_mean(
        misfeedback_per_token(
            student_logits,
            jax.lax.stop_gradient(classmate_logits),
            temperature=temperature,
            variant=misfeedback_variant,
            targets=targets,
            **(misfeedback_kwargs or {}),
        ),
        loss_mask,
    )
    return kd + misfeedback_weight * mf, {"kd": kd, "misfeedback": mf}


def minillm_importance_weights(
    student_token_logprobs: Array, teacher_token_logprobs: Array, *, teacher_mix: float = 0.2
) -> Array:
    """w_t = q(y_t) / p~(y_t), p~ = teacher_mix * p + (1 - teacher_mix) * q (MiniLLM).

    Args:
      student_token_logprobs, teacher_token_logprobs: ``[B, T]`` log q(y_t), log p(y_t)
        of the sampled tokens, under the rollout-time models.
      teacher_mix: MiniLLM's ``teacher_mixed_alpha`` (0.2); 0 gives w = 1.

    Returns:
      ``[B, T]`` float32 weights, no gradient.
    """
    logq = jax.lax.stop_gradient(student_token_logprobs.astype(jnp.float32))
    logp = jax.lax.stop_gradient(teacher_token_logprobs.astype(jnp.float32))
    if teacher_mix == 0:
        return jnp.ones_like(logq)
    log_mix = jnp.logaddexp(math.log1p(-teacher_mix) + logq, math.log(teacher_mix) + logp)
    return jnp.exp(logq - log_mix)


def minillm_rewards(
    teacher_token_logprobs: Array,
    student_token_logprobs: Array,
    *,
    reward_scaling: float = 0.5,
    reward_clip: float = 100.0,
) -> Array:
    """r_t = clip((log p(y_t) - log q(y_t)) / reward_scaling, -clip, clip) (MiniLLM).

    Summed over a sequence, E_q[sum_t r_t] is -KL(q || p) / reward_scaling at
    sequence level: maximising it minimises reverse KL.
    """
    r = (teacher_token_logprobs.astype(jnp.float32) - student_token_logprobs) / reward_scaling
    return jax.lax.stop_gradient(jnp.clip(r, -reward_clip, reward_clip))


def minillm_advantages(
    rewards: Array,
    mask: Array,
    *,
    gamma: float = 0.95,
    length_norm: bool = True,
    whiten: bool = True,
) -> Array:
    """A_t = (sum_{t' >= t} gamma^{t'-t} r_t') / (scored positions from t on), whitened.

    Args:
      rewards: ``[B, T]`` per scored position (0 elsewhere is not required).
      mask: ``[B, T]`` 0/1 scored positions.
      gamma: discount (0.95).
      length_norm: divide by the number of remaining scored positions (MiniLLM).
      whiten: normalise to zero mean, unit variance over the scored positions of
        the batch (MiniLLM whitens over all entries, padding included).

    Returns:
      ``[B, T]`` float32, no gradient.
    """
    m = (mask != 0).astype(jnp.float32)
    r = jnp.where(m > 0, rewards.astype(jnp.float32), 0.0)

    def step(carry, r_t):
        carry = r_t + gamma * carry
        return carry, carry

    _, returns = jax.lax.scan(step, jnp.zeros(r.shape[0]), r.T, reverse=True)
    adv = returns.T
    if length_norm:
        remaining = jnp.flip(jnp.cumsum(jnp.flip(m, 1), axis=1), 1)
        adv = adv / jnp.maximum(remaining, 1.0)
    if whiten:
        count = jnp.maximum(m.sum(), 1.0)
        mean = jnp.sum(adv * m) / count
        var = jnp.sum(jnp.square(adv - mean) * m) / count
        adv = (adv - mean) * jax.lax.rsqrt(var + 1e-8)
    return jax.lax.stop_gradient(adv * m)


def minillm_pg_per_token(
    student_logits: Array,
    targets: Array,
    old_logprobs: Array,
    advantages: Array,
    importance_weights: Array,
    *,
    clip_ratio: float = 0.2,
    temperature: float = 1.0,
) -> Array:
    """PPO-clipped policy-gradient loss per token (MiniLLM's ``_pg_loss``).

    ratio_t = exp(log q_theta(y_t) - log q_old(y_t)) * w_t;
    loss_t = max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps)).

    Args:
      student_logits: ``[..., V]`` current policy.
      targets: ``[...]`` int sampled tokens; old_logprobs, advantages,
        importance_weights: ``[...]`` rollout-time values (no gradient).
      clip_ratio: eps (0.2).
      temperature: loss temperature.

    Returns:
      ``[...]`` float32.
    """
    logq = token_log_probs(student_logits, targets, temperature=temperature)
    ratio = jnp.exp(logq - jax.lax.stop_gradient(old_logprobs)) * importance_weights
    a = jax.lax.stop_gradient(advantages)
    return jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio))


def minillm_loss(
    student_logits: Array,
    teacher_logits: Array,
    targets: Array,
    mask: Array,
    old_logprobs: Array,
    advantages: Array,
    importance_weights: Array,
    *,
    clip_ratio: float = 0.2,
    single_step: bool = True,
    temperature: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """MiniLLM's RL loss on (teacher-mixed) rollouts: PPO-clipped PG + single-step KL.

    L = mean_t pg_t + [single_step] mean_t KL(q_t || p_t), the single-step term
    being the exact token-level reverse KL on rollout prefixes, without w_t.
    Inputs are aligned (use :func:`next_token_targets`): ``[B, T, V]`` logits,
    ``[B, T]`` targets/mask/old log-probs/advantages/weights.

    Returns:
      ``(loss, {"pg": ..., "single_step": ...})``.
    """
    pg = masked_mean(
        minillm_pg_per_token(
            student_logits,
            targets,
            old_logprobs,
            advantages,
            importance_weights,
            clip_ratio=clip_ratio,
            temperature=temperature,
        ),
        mask,
    )
    reg = masked_mean(
        reverse_kl_per_token(
            student_logits, jax.lax.stop_gradient(teacher_logits), temperature=temperature
        ),
        mask,
    )
    return pg + (reg if single_step else 0.0), {"pg": pg, "single_step": reg}


def minillm_pretrain_loss(
    student_logits: Array,
    teacher_logits: Array | None,
    targets: Array,
    mask: Array,
    *,
    kd_ratio: float = 0.5,
) -> Array:
    """MiniLLM's pre-training term: (1 - kd_ratio) * CE + kd_ratio * KL(p || q).

    MiniLLM's code uses the soft cross-entropy -sum p log q for the KD part; the
    forward KL here differs from it by the teacher's entropy, a constant in the
    student's parameters. Without a teacher this is plain CE.
    """
    ce = cross_entropy(student_logits, targets, mask)
    if teacher_logits is None or kd_ratio == 0:
        return ce
    kd = distillation_loss(
        student_logits, jax.lax.stop_gradient(teacher_logits), mask, divergence="forward_kl"
    )
    return (1 - kd_ratio) * ce + kd_ratio * kd
