"""Each method's objective as per-token functions over models' logits rows.

A `Part` is one batch a role's loss reads and the per-token loss on it:
`token_fn(logits, extras) -> (per_token, aux)`, with `logits` the tuple of
`[N, V]` float32 rows of the trained model first and then the frozen models
in `Part.others`, `extras` per-token inputs (`targets`, a dynamic weight).
The step forms the rows densely or chunk by chunk
(`classkd_jax.losses.token_loss`) and divides each part's sum by its token
count, so a role's loss is `sum over parts of sum(per_token) / count`: token
means of each part, exact across micro-batches, devices and hosts. `aux`
values are logged as token means and carry no gradient.

Methods (p = teacher, q = student, c = classmate; `configs/*.py` docstrings
say what each config key means):
  sft:      off: CE(q)
  kd:       off: (1 - ce_weight) * D(p, q) + ce_weight * CE(q)
  gkd:      off: JSD_beta(p, q)           (dataset, teacher samples, or the
                                           student's samples: the batch decides)
  classkd:  off: off_weight * D_off(p, q);  on: on_weight * D_on(p, q) + w * M(q, c)
            (classkd.estimator='token'), or the score-function surrogate of the
            sequence-level KL(q || p) - w * KL(q || c) ('sequence')
  classmate (classkd): off: D(p, c)
  seqkd:    off: CE(q)                    (on the teacher's generated responses)
  distillm: off: kd_ratio * SKL_alpha(p, q) + (1 - kd_ratio) * CE(q)
                                          (dataset rows, fresh samples or replay)
  minillm:  on:  PPO-clipped PG(q; A, w) + KL(q_t || p_t)   (teacher-mixed rollouts)
  gkd, distillm, minillm with misfeedback.weight > 0 (`+mf`, `with_misfeedback`):
            the part on the student's samples gets + w * M(q, c), and the
            classmate trains on the method's batch ('off', MiniLLM's 'on') as
            ClassKD's does: D(p, c) under its schedule and gap control
  with a plain-text stream (data.lm_path), distillm and minillm add
            lm:  lm_coef * ((1 - lm_kd_ratio) * CE(q) + lm_kd_ratio * KL(p || q))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from classkd_jax import losses
from classkd_jax.teacher_cache.lookup import CACHE_KEYS as CACHE_EXTRAS

TokenFn = Callable[[tuple[jax.Array, ...], Mapping[str, jax.Array]], Any]


@dataclasses.dataclass(frozen=True)
class Part:
    """One batch of a role's objective.

    Attributes:
      batch: the key of the step's batch it reads ('off' or 'on').
      others: frozen roles whose logits `token_fn` gets after the trained
        model's, in order ('teacher', 'classmate').
      token_fn: see the module docstring.
      extras: per-token extras it needs: 'targets' (next tokens), 'weight'
        (the dynamic misfeedback weight, broadcast per token).
    """

    batch: str
    others: tuple[str, ...]
    token_fn: TokenFn
    extras: tuple[str, ...] = ()


def _divergence(name: str, temperature: float, **kwargs) -> Callable:
    fn = losses.get_divergence(name)
    return lambda q, p: fn(q, p, temperature=temperature, **kwargs)


def _ce(q: jax.Array, targets: jax.Array) -> jax.Array:
    return losses.cross_entropy_per_token(q, targets)


def sft_parts(config) -> tuple[Part, ...]:
    def token_fn(logits, ex):
        ce = _ce(logits[0], ex["targets"])
        return ce, {"ce": ce}

    return (Part("off", (), token_fn, ("targets",)),)


def _kd_with_ce(div: Callable, ce_weight: float, name: str) -> Part:
    """'off': (1 - ce_weight) * div(q, p) + ce_weight * CE(q), the divergence logged as `name`."""

    def token_fn(logits, ex):
        q, p = logits
        kd = div(q, p)
        if ce_weight == 0:
            return kd, {name: kd}
        ce = _ce(q, ex["targets"])
        return (1 - ce_weight) * kd + ce_weight * ce, {name: kd, "ce": ce}

    return Part("off", ("teacher",), token_fn, ("targets",) if ce_weight else ())


def kd_parts(config) -> tuple[Part, ...]:
    k = config.kd
    if uses_cache(config):
        div = cached_divergence(config, k.divergence, float(k.temperature))
        return (_cached_kd_with_ce(div, float(k.ce_weight), "kd"),)
    return (_kd_with_ce(_divergence(k.divergence, k.temperature), float(k.ce_weight), "kd"),)


# --- the offline teacher (teacher.cache, docs/teacher_cache.md) ---------------
# Divergences a cache can stand for: the forward KL (sampled or top-k) and
# DistiLLM's skew KL (sampled), all expectations over y ~ p.
CACHED_DIVERGENCES = ("forward_kl", "skew_forward_kl")


def uses_cache(config) -> bool:
    """Whether the run reads its off-policy teacher from `teacher.cache`."""
    return bool(config.teacher.cache)


def cached_divergence(config, name: str, temperature: float, **kwargs) -> Callable:
    """`fn(q, extras) -> [N]` from the cache's `CACHE_EXTRAS` (`[N, W]` each): the
    estimate of divergence `name` of `teacher_cache.loss` ('sampled' or 'topk')."""
    tc = config.teacher_cache
    if name not in CACHED_DIVERGENCES or (tc.loss == "topk" and name != "forward_kl"):
        raise ValueError(
            f"teacher.cache with teacher_cache.loss={tc.loss!r} stands for "
            f"{CACHED_DIVERGENCES if tc.loss == 'sampled' else ('forward_kl',)}, not {name!r}"
        )
    if tc.loss == "topk":
        return lambda q, ex: losses.topk_residual_kl_per_token(
            q, ex["cache_ids"], ex["cache_logp"], temperature=temperature
        )
    num, mode = int(tc.num_samples), str(tc.weights)
    fn = losses.sampled_kl_per_token if name == "forward_kl" else losses.sampled_skew_kl_per_token

    def div(q, ex):
        w = losses.cache_weights(ex["cache_counts"], ex["cache_logp"], num, mode)
        return fn(q, ex["cache_ids"], w, ex["cache_logp"], temperature=temperature, **kwargs)

    return div


def _cached_off_part(config, name: str, weight: float, value_key: str, fkl_key: str) -> Part:
    """'off': weight * D(p, m) from the cache for the trained model m, logging D as
    `value_key` and the cache's estimate of KL(p || m) as `fkl_key` (the gap
    control's measure; both KLs of the gap are then estimated from the same draws)."""
    t = loss_temperature(config)
    div = cached_divergence(config, name, t)
    fkl = div if name == "forward_kl" else cached_divergence(config, "forward_kl", t)

    def token_fn(logits, ex):
        value = div(logits[0], ex)
        return weight * value, {value_key: value, fkl_key: fkl(logits[0], ex)}

    return Part("off", (), token_fn, CACHE_EXTRAS)


def _cached_kd_with_ce(div: Callable, ce_weight: float, name: str) -> Part:
    """`_kd_with_ce` with the teacher read from the cache: no frozen model's logits."""

    def token_fn(logits, ex):
        q = logits[0]
        kd = div(q, ex)
        if ce_weight == 0:
            return kd, {name: kd}
        ce = _ce(q, ex["targets"])
        return (1 - ce_weight) * kd + ce_weight * ce, {name: kd, "ce": ce}

    return Part("off", (), token_fn, CACHE_EXTRAS + (("targets",) if ce_weight else ()))


def gkd_parts(config) -> tuple[Part, ...]:
    g = config.gkd
    jsd = _divergence("generalized_jsd", g.temperature, beta=float(g.beta))

    def token_fn(logits, ex):
        value = jsd(*logits)
        return value, {"jsd": value}

    return (Part("off", ("teacher",), token_fn),)


def _forward_kl(q, p):
    return losses.forward_kl_per_token(q, p)


def classkd_parts(config, *, on_policy: bool) -> tuple[Part, ...]:
    """The student's parts; `on_policy` adds the samples' part (static per compile)."""
    k, m = config.classkd, config.misfeedback
    off_div = _divergence(k.off_policy_divergence, k.temperature)
    off_w = float(k.off_policy_weight)

    def off_fn(logits, ex):
        q, p = logits
        off = off_div(q, p)
        return off_w * off, {"off_kd": off, "student_fkl": _forward_kl(q, p)}

    parts = [Part("off", ("teacher",), off_fn)]
    if uses_cache(config):  # the dataset rows' teacher from teacher.cache
        parts = [_cached_off_part(config, k.off_policy_divergence, off_w, "off_kd", "student_fkl")]
    if not on_policy:
        return tuple(parts)
    if k.estimator == "sequence":
        return tuple(parts) + (_classkd_sequence_part(config),)
    on_div = _divergence(k.on_policy_divergence, k.temperature)
    on_w = float(k.on_policy_weight)
    with_misfeedback = float(m.weight) != 0
    mis_kw = dict(
        temperature=float(k.temperature),
        variant=m.variant,
        alpha=float(m.alpha),
        margin=float(m.margin),
        beta=float(m.beta),
    )

    def on_fn(logits, ex):
        q, p = logits[:2]
        on = on_div(q, p)
        if not with_misfeedback:
            return on_w * on, {"on_kd": on}
        targets = ex["targets"] if m.variant == "sigmoid" else None
        mis = losses.misfeedback_per_token(q, logits[2], targets=targets, **mis_kw)
        return on_w * on + ex["weight"] * mis, {"on_kd": on, "misfeedback": mis}

    # With weight 0 the classmate is not even an input: no path to the student.
    others = ("teacher", "classmate") if with_misfeedback else ("teacher",)
    extras = ("weight",) + (("targets",) if m.variant == "sigmoid" else ())
    parts.append(Part("on", others, on_fn, extras if with_misfeedback else ()))
    return tuple(parts)


# The per-token extras of the sequence estimator's part, written by the step
# before the loss (`StepBuilder._sequence_extras`): the KD and misfeedback
# advantages and the length normalisation of `losses.sequence_weights`.
SEQUENCE_EXTRAS = ("kd_adv", "mis_adv", "norm")


def _classkd_sequence_part(config) -> Part:
    """'on' with `classkd.estimator='sequence'`: the score-function surrogate of
    the sequence-level KL(q || p) and misfeedback -KL(q || c) (see
    `classkd_jax.losses.reinforce`). Logged `on_kd` and `misfeedback` are the
    batch means of the length-normalised sequence log-ratios, not the surrogate."""
    k, m = config.classkd, config.misfeedback
    t, on_w = float(k.temperature), float(k.on_policy_weight)
    with_misfeedback = float(m.weight) != 0
    variant, alpha = m.variant, float(m.alpha)

    def token_fn(logits, ex):
        y = ex["targets"]
        logq = losses.token_log_probs(logits[0], y, temperature=t)
        r = logq - losses.token_log_probs(logits[1], y, temperature=t)
        kd, kd_value = losses.reinforce_per_token(logq, r, ex["kd_adv"], ex["norm"])
        if not with_misfeedback:
            return on_w * kd, {"on_kd": kd_value}
        logc = losses.token_log_probs(logits[2], y, temperature=t)
        s = losses.misfeedback_sample_log_ratio(logq, logc, variant=variant, alpha=alpha)
        mis, mis_value = losses.reinforce_per_token(logq, s, ex["mis_adv"], ex["norm"])
        return on_w * kd - ex["weight"] * mis, {"on_kd": kd_value, "misfeedback": -mis_value}

    if not with_misfeedback:
        return Part("on", ("teacher",), token_fn, ("targets", "kd_adv", "norm"))
    extras = ("targets", "weight") + SEQUENCE_EXTRAS
    return Part("on", ("teacher", "classmate"), token_fn, extras)


def classmate_parts(config) -> tuple[Part, ...]:
    """The classmate's objective: D(p, c) on `classmate_batch(config)`, teacher only."""
    if uses_cache(config):
        part = _cached_off_part(
            config, config.classmate.divergence, 1.0, "classmate_kd", "classmate_fkl"
        )
        return (dataclasses.replace(part, batch=classmate_batch(config)),)
    div = _divergence(config.classmate.divergence, loss_temperature(config))

    def token_fn(logits, ex):
        c, p = logits
        value = div(c, p)
        return value, {"classmate_kd": value, "classmate_fkl": _forward_kl(c, p)}

    return (Part(classmate_batch(config), ("teacher",), token_fn),)


# Methods that sample from the student and take ClassKD's misfeedback term when
# misfeedback.weight > 0 (their `+mf` variant); classkd has it built in.
MISFEEDBACK_METHODS = ("gkd", "distillm", "minillm")


def with_misfeedback(config) -> bool:
    """Whether `config` adds the misfeedback term to a sampling baseline (`+mf`)."""
    return config.method in MISFEEDBACK_METHODS and float(config.misfeedback.weight) > 0


def has_classmate(config) -> bool:
    """Whether the run builds and trains a classmate (ClassKD, or a baseline's `+mf`)."""
    return config.method == "classkd" or with_misfeedback(config)


def classmate_batch(config) -> str:
    """The batch the classmate learns from: the student's batch of its method
    ('off': ClassKD's dataset rows, GKD's and DistiLLM's step batch; MiniLLM's 'on' rollouts)."""
    return "on" if config.method == "minillm" else "off"


def loss_temperature(config) -> float:
    """The method's loss temperature (the misfeedback and the classmate's loss use it)."""
    section = config.method if config.method in MISFEEDBACK_METHODS else "classkd"
    return float(config[section].temperature)


def misfeedback_part(config, part: Part) -> Part:
    """`part` (trained model and teacher logits first) plus w * M(q, c) on its tokens,
    the classmate's logits appended to its inputs; `w` is the 'weight' extra (0 on a
    batch that holds no student samples: `objectives.control`). Also logs
    `student_fkl` = KL(p || q), the student's side of the classmate's gap control."""
    m = config.misfeedback
    kw = dict(
        temperature=loss_temperature(config),
        variant=m.variant,
        alpha=float(m.alpha),
        margin=float(m.margin),
        beta=float(m.beta),
    )
    sigmoid = m.variant == "sigmoid"

    def token_fn(logits, ex):
        value, aux = part.token_fn(logits[:-1], ex)
        targets = ex["targets"] if sigmoid else None
        mis = losses.misfeedback_per_token(logits[0], logits[-1], targets=targets, **kw)
        aux = {**aux, "misfeedback": mis, "student_fkl": _forward_kl(logits[0], logits[1])}
        return value + ex["weight"] * mis, aux

    extras = tuple(dict.fromkeys(part.extras + ("weight",) + (("targets",) if sigmoid else ())))
    return Part(part.batch, part.others + ("classmate",), token_fn, extras)


def lm_part(config) -> Part:
    """The pre-training term on the plain-text stream ('lm' batch): MiniLLM's
    (1 - kd) * CE + kd * KL(p || q) with kd = `lm.kd_ratio` (0.5), DistiLLM's
    plain CE (kd = 0), times `lm.coef` (1 in both)."""
    cfg = config.lm
    coef, kd_ratio = float(cfg.coef), float(cfg.kd_ratio)

    def token_fn(logits, ex):
        ce = _ce(logits[0], ex["targets"])
        if kd_ratio == 0:
            return coef * ce, {"lm_ce": ce}
        kd = losses.forward_kl_per_token(logits[0], logits[1])
        return coef * ((1 - kd_ratio) * ce + kd_ratio * kd), {"lm_ce": ce, "lm_kd": kd}

    return Part("lm", ("teacher",) if kd_ratio else (), token_fn, ("targets",))


def distillm_parts(config, cached: bool = False) -> tuple[Part, ...]:
    """DistiLLM's skew KL / skew reverse KL (`distillm.divergence`, `alpha`,
    `stop_grad_mixture`), mixed with CE on the batch's tokens by `kd_ratio`;
    `cached`: the batch is dataset rows carrying the teacher cache's draws."""
    d = config.distillm
    if cached:
        kw = dict(alpha=float(d.alpha), stop_grad_mixture=bool(d.stop_grad_mixture))
        div = cached_divergence(config, d.divergence, float(d.temperature), **kw)
        return (_cached_kd_with_ce(div, 1.0 - float(d.kd_ratio), "skew_kd"),)
    div = _divergence(
        d.divergence,
        d.temperature,
        alpha=float(d.alpha),
        stop_grad_mixture=bool(d.stop_grad_mixture),
    )
    return (_kd_with_ce(div, 1.0 - float(d.kd_ratio), "skew_kd"),)


def minillm_parts(config) -> tuple[Part, ...]:
    """MiniLLM's RL loss on a rollout minibatch ('on'): the PPO-clipped policy
    gradient with the rollout-time log-probs, advantages and importance weights
    (extras), plus the exact single-step reverse KL(q_t || p_t) without the
    weight (`minillm.single_step`)."""
    m = config.minillm
    clip, temperature = float(m.clip_ratio), float(m.temperature)
    single_step = bool(m.single_step)

    def token_fn(logits, ex):
        q, p = logits
        logq = losses.token_log_probs(q, ex["targets"], temperature=temperature)
        ratio = jnp.exp(logq - ex["old_logprobs"]) * ex["importance_weights"]
        a = ex["advantages"]
        pg = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 1 - clip, 1 + clip))
        reg = losses.reverse_kl_per_token(q, p, temperature=temperature)
        clipped = (jnp.abs(ratio - 1) > clip).astype(jnp.float32)
        aux = {"pg": pg, "single_step": reg, "ratio": ratio, "clip_frac": clipped}
        return (pg + reg if single_step else pg), aux

    extras = ("targets", "old_logprobs", "importance_weights", "advantages")
    return (Part("on", ("teacher",), token_fn, extras),)


def student_parts(
    config, *, on_policy: bool = False, lm: bool = False, cached: bool = False
) -> tuple[Part, ...]:
    """The student's objective for `config.method` (`lm`: the batch has a
    plain-text 'lm' part; `cached`: its 'off' rows carry the teacher cache's
    draws; static per compile, like `on_policy`), with the misfeedback term on
    the method's batch when `with_misfeedback(config)`."""
    parts = _method_parts(config, on_policy=on_policy, lm=lm, cached=cached)
    if not with_misfeedback(config):
        return parts
    name = classmate_batch(config)
    return tuple(misfeedback_part(config, p) if p.batch == name else p for p in parts)


def _method_parts(config, *, on_policy: bool, lm: bool, cached: bool) -> tuple[Part, ...]:
    method = config.method
    if method in ("distillm", "minillm"):
        parts = distillm_parts(config, cached) if method == "distillm" else minillm_parts(config)
        return parts + ((lm_part(config),) if lm else ())
    if method in ("sft", "seqkd"):
        return sft_parts(config)
    if method == "kd":
        return kd_parts(config)
    if method == "gkd":
        return gkd_parts(config)
    if method == "classkd":
        return classkd_parts(config, on_policy=on_policy)
    raise ValueError(f"method={method!r} has no student objective")


def misfeedback_weight(config, step: int) -> float:
    """w(step): 0 before `misfeedback.start_step`, then a linear ramp to `weight`
    over `warmup_steps` (a step function when it is 0). `step` is 0-based."""
    m = config.misfeedback
    since = step - int(m.start_step)
    if since < 0:
        return 0.0
    warmup = int(m.warmup_steps)
    ramp = min((since + 1) / warmup, 1.0) if warmup > 0 else 1.0
    return float(m.weight) * ramp


def classmate_scheduled(config, step: int) -> bool:
    """Whether the classmate's schedule lets it update at 0-based `step` (the gap
    control decides in the step): from `start_step`, every `update_every`-th
    step, before `stop_step` (0 = never stops)."""
    cm = config.classmate
    since = step - int(cm.start_step)
    if since < 0 or since % int(cm.update_every):
        return False
    return not (int(cm.stop_step) > 0 and step >= int(cm.stop_step))


def control(config, step: int, samples: bool = True) -> dict[str, np.ndarray]:
    """The step's schedule values, computed on the host and passed to the step as
    replicated scalars, so that sweeping them does not recompile (runs with a
    classmate: `has_classmate`). `samples`: whether the step's batch holds the
    student's samples; the misfeedback weight is 0 on a batch that does not
    (a `+mf` baseline's dataset or teacher-sampled step)."""
    weight = misfeedback_weight(config, step) if samples else 0.0
    return {
        "misfeedback_weight": np.float32(weight),
        "classmate_update": np.bool_(classmate_scheduled(config, step)),
        "min_gap": np.float32(config.classmate.min_gap),
    }
