"""Config values checked before anything is loaded: each error names the key and the range.

Also the things derived from the config in one place: the total number of
steps (`steps`, or `epochs` of the training rows), the validation interval
(`eval_every` steps, or `eval_every_epochs` of the training rows), the
DistiLLM replay capacity (`replay_capacity`) and the context length the
models need (`context_length`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from classkd_jax import losses
from classkd_jax.cli import UserError
from classkd_jax.models.config import REMAT
from classkd_jax.sharding import DECODE_LAYOUTS
from classkd_jax.training.optim import SCHEDULES

METHODS = ("sft", "kd", "gkd", "classkd", "seqkd", "distillm", "minillm")
# The sampling baselines that take ClassKD's misfeedback term (`objectives.MISFEEDBACK_METHODS`).
MISFEEDBACK_METHODS = ("gkd", "distillm", "minillm")
DTYPES = ("float32", "bfloat16", "float16")
# Keys a rerun in the same workdir may change (the rest must match config.json).
RESUMABLE_CHANGES = (
    "steps",
    "epochs",
    "log_every",
    "eval_every",
    "eval_every_epochs",
    "checkpoint_every",
    "checkpoint_keep",
    "progress",
    "peak_tflops",
    "compilation_cache",
    "mesh",  # a checkpoint restores onto another mesh or process count
)

# Keys added after runs were started, with the value that reproduces what those
# runs did: a config.json without the key resumes as if it held that value.
ADDED_KEYS = {"classkd.estimator": "token"}


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"config key {key}={value!r} is out of range: expected {expected}")


def _choice(key: str, value: Any, choices) -> None:
    _require(value in choices, key, value, f"one of {tuple(choices)}")


def _unit(key: str, value: float, *, open_left=False, open_right=False) -> None:
    lo = value > 0 if open_left else value >= 0
    hi = value < 1 if open_right else value <= 1
    interval = f"{'(' if open_left else '['}0, 1{')' if open_right else ']'}"
    _require(lo and hi, key, value, f"a number in {interval}")


def _role(c, role: str, trainable: bool) -> None:
    block = c[role]
    _choice(f"{role}.dtype", block.dtype, DTYPES)
    _choice(f"{role}.param_dtype", block.param_dtype, DTYPES)
    _choice(f"{role}.remat", block.remat, REMAT)
    if not trainable:
        return
    _require(block.lr > 0, f"{role}.lr", block.lr, "> 0")
    _choice(f"{role}.schedule", block.schedule, SCHEDULES)
    _require(block.warmup_steps >= 0, f"{role}.warmup_steps", block.warmup_steps, ">= 0")
    _require(block.clip >= 0, f"{role}.clip", block.clip, ">= 0 (0 = off)")
    _require(block.weight_decay >= 0, f"{role}.weight_decay", block.weight_decay, ">= 0")
    _unit(f"{role}.final_lr_ratio", block.final_lr_ratio)
    _unit(f"{role}.b1", block.b1, open_right=True)
    _unit(f"{role}.b2", block.b2, open_right=True)


def validate(c) -> None:
    """Raises `UserError` naming the first config value out of range."""
    _choice("method", c.method, METHODS)
    _require(c.steps >= 0, "steps", c.steps, ">= 0")
    _require(c.steps > 0 or c.epochs > 0, "steps", c.steps, "> 0 (or steps=0 with epochs > 0)")
    _require(c.epochs >= 0, "epochs", c.epochs, ">= 0")
    _require(c.grad_accum >= 1, "grad_accum", c.grad_accum, ">= 1")
    for key in ("log_every", "checkpoint_every", "checkpoint_keep"):
        _require(c[key] >= 1, key, c[key], ">= 1")
    _require(c.eval_every >= 0, "eval_every", c.eval_every, ">= 0 (0 = no validation)")
    _require(
        c.eval_every_epochs >= 0,
        "eval_every_epochs",
        c.eval_every_epochs,
        ">= 0 (0 = eval_every steps)",
    )
    _choice("best_metric", c.best_metric, ("dev_rougeL", "dev_loss"))
    for axis in ("data", "fsdp", "tensor"):
        value = c.mesh[axis]
        _require(value == -1 or value >= 1, f"mesh.{axis}", value, ">= 1, or -1 (the rest)")
    _require(c.peak_tflops >= 0, "peak_tflops", c.peak_tflops, ">= 0 (0 = from the table)")
    _role(c, "student", True)
    if c.method != "sft":
        _role(c, "teacher", False)
    if c.method == "classkd":
        _classkd(c)
    if c.method == "classkd" or (c.method in MISFEEDBACK_METHODS and c.misfeedback.weight > 0):
        _role(c, "classmate", True)
        _misfeedback(c)
    if c.method == "distillm":
        _distillm(c)
    if c.method == "minillm":
        _minillm(c)
    if c.method == "seqkd":
        k = c.seqkd
        _require(k.batch_size >= 1, "seqkd.batch_size", k.batch_size, ">= 1")
        _require(k.chunk_prompts >= 1, "seqkd.chunk_prompts", k.chunk_prompts, ">= 1")
    if c.method in ("distillm", "minillm"):
        _require(c.lm.coef >= 0, "lm.coef", c.lm.coef, ">= 0")
        _unit("lm.kd_ratio", c.lm.kd_ratio)
    _teacher_cache(c)
    _choice("loss.impl", c.loss.impl, ("auto", "dense", "chunked"))
    _require(c.loss.chunk_size >= 1, "loss.chunk_size", c.loss.chunk_size, ">= 1")
    _sampling(c)
    divergences = tuple(losses.DIVERGENCES)
    _choice("kd.divergence", c.kd.divergence, divergences)
    _unit("kd.ce_weight", c.kd.ce_weight)
    _require(c.kd.temperature > 0, "kd.temperature", c.kd.temperature, "> 0")
    _unit("gkd.lmbda", c.gkd.lmbda)
    _unit("gkd.beta", c.gkd.beta)
    _require(c.gkd.temperature > 0, "gkd.temperature", c.gkd.temperature, "> 0")
    if c.method == "gkd" and c.gkd.replay:
        if c.gkd.seq_kd:
            raise UserError("gkd.replay=True replays the student's samples; drop gkd.seq_kd")
        _replay_sizes(c, "gkd.replay=True")
    _require(c.eval.num_examples >= 0, "eval.num_examples", c.eval.num_examples, ">= 0")
    _require(c.eval.max_new_tokens >= 1, "eval.max_new_tokens", c.eval.max_new_tokens, ">= 1")
    _require(c.eval.batch_size >= 1, "eval.batch_size", c.eval.batch_size, ">= 1")
    _require(c.data.batch_size >= 1, "data.batch_size", c.data.batch_size, ">= 1")
    if c.teacher.tokenizer:
        _cross_tokenizer(c)


CROSS_TOKENIZER_LOSSES = ("alm", "exact", "projected", "uld")  # `training.cross_objectives.LOSSES`


CROSS_TOKENIZER_METHODS = ("kd", "gkd", "classkd", "seqkd")


def _cross_tokenizer(c) -> None:
    """A teacher with its own tokenizer (`teacher.tokenizer`): KD, or GKD on dataset
    rows and the student's samples, on unpacked rows (one example per row, aligned
    on the host); SeqKD on the text of the teacher's answers (no alignment)."""
    if c.method not in CROSS_TOKENIZER_METHODS:
        raise UserError(
            f"teacher.tokenizer={c.teacher.tokenizer!r} (a teacher with another tokenizer) "
            f"works with method='kd', 'gkd', 'classkd' or 'seqkd' so far, not {c.method!r} "
            "(docs/models.md)"
        )
    if c.teacher.template:
        from classkd_jax.data.templates import TEMPLATES

        _choice("teacher.template", c.teacher.template, tuple(TEMPLATES))
    if c.method == "seqkd":
        return
    if c.method == "classkd" and c.classkd.estimator != "token":
        raise UserError(
            "teacher.tokenizer with ClassKD needs classkd.estimator='token' (the sequence "
            "estimator's teacher log-ratios are not aligned yet)"
        )
    if c.method == "gkd" and (c.gkd.seq_kd or c.gkd.replay or c.misfeedback.weight > 0):
        raise UserError(
            "teacher.tokenizer with GKD trains on dataset rows and the student's fresh "
            "samples only: gkd.seq_kd, gkd.replay and misfeedback.weight > 0 are not "
            "supported with another tokenizer yet"
        )
    _choice("cross_tokenizer.loss", c.cross_tokenizer.loss, CROSS_TOKENIZER_LOSSES)
    inner = c.cross_tokenizer.inner_ce
    if inner and (c.method not in ("kd", "classkd") or c.cross_tokenizer.loss == "alm"):
        raise UserError(
            "cross_tokenizer.inner_ce=True trains dataset rows on the columns a pair loss "
            "leaves unscored: it needs method='kd' or 'classkd' and cross_tokenizer.loss="
            f"'exact', 'projected' or 'uld' (not method={c.method!r}, "
            f"loss={c.cross_tokenizer.loss!r})"
        )
    tau = c.cross_tokenizer.binarization_temp
    _require(tau > 0, "cross_tokenizer.binarization_temp", tau, "> 0")
    if c.data.pack:
        raise UserError(
            "teacher.tokenizer is set: cross-tokenizer rows hold one example each; "
            "set data.pack=False"
        )


def _sampling(c) -> None:
    s = c.sampling
    _require(s.max_new_tokens >= 1, "sampling.max_new_tokens", s.max_new_tokens, ">= 1")
    _require(s.temperature > 0, "sampling.temperature", s.temperature, "> 0")
    _require(0 < s.top_p <= 1, "sampling.top_p", s.top_p, "a number in (0, 1]")
    _require(s.top_k >= 0, "sampling.top_k", s.top_k, ">= 0 (0 = off)")
    _require(s.batch_size >= 0, "sampling.batch_size", s.batch_size, ">= 0 (0 = data.batch_size)")
    _choice("sampling.decode_layout", s.decode_layout, DECODE_LAYOUTS)


def _classkd(c) -> None:
    k, m = c.classkd, c.misfeedback
    divergences = tuple(losses.DIVERGENCES)
    _choice("classkd.off_policy_divergence", k.off_policy_divergence, divergences)
    _choice("classkd.on_policy_divergence", k.on_policy_divergence, divergences)
    _unit("classkd.lmbda", k.lmbda)
    _require(k.temperature > 0, "classkd.temperature", k.temperature, "> 0")
    for key in ("off_policy_weight", "on_policy_weight"):
        _require(k[key] >= 0, f"classkd.{key}", k[key], ">= 0")
    _choice("misfeedback.variant", m.variant, losses.MISFEEDBACK_VARIANTS)
    _choice("classkd.estimator", k.estimator, losses.ESTIMATORS)
    if k.estimator == "sequence":
        _sequence_estimator(c)


def _misfeedback(c) -> None:
    """The misfeedback term's and the classmate's keys (ClassKD, a baseline's `+mf`)."""
    m, cm = c.misfeedback, c.classmate
    _choice("misfeedback.variant", m.variant, losses.MISFEEDBACK_VARIANTS)
    _choice("classmate.divergence", cm.divergence, tuple(losses.DIVERGENCES))
    _require(m.weight >= 0, "misfeedback.weight", m.weight, ">= 0")
    _require(m.start_step >= 0, "misfeedback.start_step", m.start_step, ">= 0")
    _require(m.warmup_steps >= 0, "misfeedback.warmup_steps", m.warmup_steps, ">= 0")
    _unit("misfeedback.alpha", m.alpha, open_left=True, open_right=True)
    _require(m.margin >= 0, "misfeedback.margin", m.margin, ">= 0")
    _require(m.beta > 0, "misfeedback.beta", m.beta, "> 0")
    _require(cm.start_step >= 0, "classmate.start_step", cm.start_step, ">= 0")
    _require(cm.update_every >= 1, "classmate.update_every", cm.update_every, ">= 1")
    _require(cm.stop_step >= 0, "classmate.stop_step", cm.stop_step, ">= 0 (0 = never)")
    _unit("classmate.gap_ema", cm.gap_ema, open_right=True)


def _sequence_estimator(c) -> None:
    """The score-function identity needs the samples drawn from the q it scores, and
    a misfeedback variant with a sequence-level log-ratio (losses/reinforce.py)."""
    k, m, s = c.classkd, c.misfeedback, c.sampling
    if m.variant not in losses.SEQUENCE_MISFEEDBACK_VARIANTS:
        raise UserError(
            f"classkd.estimator='sequence' with misfeedback.variant={m.variant!r}: that "
            f"variant has no sequence-level form; use one of "
            f"{losses.SEQUENCE_MISFEEDBACK_VARIANTS} or classkd.estimator='token'"
        )
    if s.temperature != k.temperature or s.top_k != 0 or s.top_p != 1:
        raise UserError(
            "classkd.estimator='sequence' scores the samples under the q they were drawn "
            f"from: needs sampling.temperature == classkd.temperature ({k.temperature}), "
            f"sampling.top_k=0 and sampling.top_p=1, got {s.temperature}, {s.top_k}, {s.top_p}"
        )


def _distillm(c) -> None:
    d = c.distillm
    _choice("distillm.divergence", d.divergence, ("skew_forward_kl", "skew_reverse_kl"))
    _unit("distillm.alpha", d.alpha, open_left=True, open_right=True)
    _unit("distillm.kd_ratio", d.kd_ratio)
    _require(d.temperature > 0, "distillm.temperature", d.temperature, "> 0")
    _unit("distillm.init_phi", d.init_phi)
    _require(d.phi_step >= 0, "distillm.phi_step", d.phi_step, ">= 0")
    _require(d.loss_threshold >= 0, "distillm.loss_threshold", d.loss_threshold, ">= 0")
    _replay_sizes(c, "DistiLLM")
    if d.adaptive and not validates(c):
        raise UserError(
            "distillm.adaptive=True moves phi at each validation, but eval_every=0 and "
            "eval_every_epochs=0: set one > 0, or distillm.adaptive=False to keep phi at "
            "distillm.init_phi"
        )


def _replay_sizes(c, who: str) -> None:
    """The replay buffer (`replay_capacity`) holds a batch; samples come a batch at a time."""
    d = c.distillm
    _require(d.capacity_batches >= 0, "distillm.capacity_batches", d.capacity_batches, ">= 0")
    _require(
        replay_capacity(c) >= c.data.batch_size,
        "distillm.capacity_batches" if d.capacity_batches > 0 else "distillm.capacity",
        d.capacity_batches if d.capacity_batches > 0 else d.capacity,
        f"a buffer of >= data.batch_size ({c.data.batch_size}) rows: a replay batch is drawn "
        "without replacement",
    )
    if int(c.sampling.batch_size) not in (0, int(c.data.batch_size)):
        raise UserError(
            f"sampling.batch_size={c.sampling.batch_size}: {who} trains on its samples in "
            f"place of the dataset batch, so it must equal data.batch_size "
            f"({c.data.batch_size}) or be 0"
        )


def _minillm(c) -> None:
    m = c.minillm
    _unit("minillm.teacher_mix", m.teacher_mix)
    _require(m.ppo_epochs >= 1, "minillm.ppo_epochs", m.ppo_epochs, ">= 1")
    _require(m.clip_ratio > 0, "minillm.clip_ratio", m.clip_ratio, "> 0")
    _unit("minillm.gamma", m.gamma)
    _require(m.reward_scaling > 0, "minillm.reward_scaling", m.reward_scaling, "> 0")
    _require(m.reward_clip > 0, "minillm.reward_clip", m.reward_clip, "> 0")
    _require(m.temperature > 0, "minillm.temperature", m.temperature, "> 0")
    sampling = int(c.sampling.batch_size) or int(c.data.batch_size)
    for key, value in (("data.batch_size", c.data.batch_size), ("sampling.batch_size", sampling)):
        _require(
            m.num_rollouts >= value and m.num_rollouts % value == 0,
            "minillm.num_rollouts",
            m.num_rollouts,
            f"a positive multiple of {key} ({value})",
        )


def uses_sampling(c) -> bool:
    """Whether the method samples from a model (during training, or SeqKD's teacher before it)."""
    if c.method == "gkd":
        return c.gkd.lmbda > 0 or c.gkd.seq_kd
    if c.method == "distillm":
        return c.distillm.init_phi > 0 or (c.distillm.adaptive and c.distillm.phi_step > 0)
    if c.method in ("minillm", "seqkd"):
        return True
    return c.method == "classkd" and c.classkd.lmbda > 0


# Methods that can read their off-policy teacher from `teacher.cache`.
CACHE_METHODS = ("kd", "classkd", "distillm")


def live_teacher(c) -> bool:
    """Whether the run loads the teacher: always without `teacher.cache`; with it,
    only for ClassKD's on-policy steps (`classkd.lmbda > 0`) and DistiLLM's
    sampled and replayed batches."""
    if c.method == "sft":
        return False
    if c.method == "distillm":
        return True
    return not c.teacher.cache or (c.method == "classkd" and c.classkd.lmbda > 0)


def _teacher_cache(c) -> None:
    """`teacher.cache` only where the method's teacher batches are fixed rows, with a
    divergence the cache stands for (`objectives.CACHED_DIVERGENCES`)."""
    t = c.teacher_cache
    _require(t.num_samples >= 1, "teacher_cache.num_samples", t.num_samples, ">= 1")
    _require(t.top_k >= 0, "teacher_cache.top_k", t.top_k, ">= 0 (0: none)")
    _choice("teacher_cache.loss", t.loss, ("sampled", "topk"))
    _choice("teacher_cache.weights", t.weights, losses.WEIGHT_MODES)
    for key in ("chunk_examples", "batch_rows", "positions_per_group"):
        _require(t[key] >= 1, f"teacher_cache.{key}", t[key], ">= 1")
    if not c.teacher.cache:
        return
    if c.method not in CACHE_METHODS:
        raise UserError(
            f"teacher.cache={c.teacher.cache!r} on method {c.method!r}: only "
            f"{', '.join(CACHE_METHODS)} read the teacher from a cache; drop it"
        )
    if c.teacher.tokenizer:
        raise UserError(
            f"teacher.cache with teacher.tokenizer={c.teacher.tokenizer!r}: the cache holds "
            "the teacher's distribution over the student's vocabulary; use the live teacher"
        )
    if t.loss == "topk" and t.top_k < 1:
        raise UserError(
            "teacher_cache.loss='topk' needs a cache built with teacher_cache.top_k > 0"
        )
    allowed = ("forward_kl",) if t.loss == "topk" else ("forward_kl", "skew_forward_kl")
    keys = {
        "kd": ("kd.divergence",),
        "classkd": ("classkd.off_policy_divergence", "classmate.divergence"),
        "distillm": ("distillm.divergence",),
    }[c.method]
    if c.method == "distillm" and c.misfeedback.weight > 0:
        raise UserError(
            "teacher.cache with distillm misfeedback.weight > 0 (+mf): its classmate and gap "
            "read the teacher's logits on the same batch; use the live teacher"
        )
    for key in keys:
        div = config_value(c, key)
        if div not in allowed:
            raise UserError(
                f"{key}={div!r} with teacher.cache: the cache ({t.loss}) stands for "
                f"{' or '.join(allowed)}; use the live teacher (teacher.cache='') for {div}"
            )


def samples_prompts(c) -> bool:
    """Whether training draws from the prompt stream (SeqKD's teacher reads every prompt once)."""
    return uses_sampling(c) and c.method != "seqkd"


def context_length(c) -> tuple[int, str]:
    """(tokens of context the models need, which keys set it)."""
    d = c.data
    need = [(int(d.max_length), "data.max_length")]
    if uses_sampling(c):
        need.append(
            (
                int(d.max_prompt_length) + int(c.sampling.max_new_tokens),
                "data.max_prompt_length + sampling.max_new_tokens",
            )
        )
    if validates(c) and c.eval.num_examples > 0:
        need.append(
            (
                int(d.max_prompt_length) + int(c.eval.max_new_tokens),
                "data.max_prompt_length + eval.max_new_tokens",
            )
        )
    return max(need)


def validates(c) -> bool:
    """Whether the run validates at all (`eval_every` or `eval_every_epochs` > 0)."""
    return c.eval_every > 0 or c.eval_every_epochs > 0


def eval_interval(c, batches_per_epoch: int) -> int:
    """Steps between validations: `round(eval_every_epochs * batches_per_epoch)`
    (at least 1) when `eval_every_epochs` > 0, else `eval_every` (0: never)."""
    if c.eval_every_epochs > 0:
        return max(round(float(c.eval_every_epochs) * batches_per_epoch), 1)
    return int(c.eval_every)


def replay_capacity(c) -> int:
    """DistiLLM's replay buffer in rows: `capacity_batches * data.batch_size`
    when `capacity_batches` > 0 (a buffer that scales with the global batch, as
    the reference's per-rank buffers do), else `capacity`."""
    d = c.distillm
    if d.capacity_batches > 0:
        return max(round(float(d.capacity_batches) * int(c.data.batch_size)), 1)
    return int(d.capacity)


def total_steps(c, batches_per_epoch: int) -> int:
    """`steps`, or `ceil(epochs * batches_per_epoch)` when `steps` is 0."""
    if c.steps > 0:
        return int(c.steps)
    return max(math.ceil(float(c.epochs) * batches_per_epoch), 1)


def check_resume(workdir: Path, resolved: dict) -> None:
    """A rerun in `workdir` must use the config it started with (but for the
    keys in `RESUMABLE_CHANGES`); the error names the first key that differs."""
    path = workdir / "config.json"
    if not path.exists():
        return
    new = _flatten(resolved)
    old = {k: v for k, v in ADDED_KEYS.items() if k in new} | _flatten(json.loads(path.read_text()))
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in RESUMABLE_CHANGES:
            continue
        if old.get(key) != new.get(key):
            raise UserError(
                f"{workdir} holds a run started with {key}={old.get(key)!r}, this command has "
                f"{key}={new.get(key)!r}: rerun with the same config to resume, or use a new "
                "--workdir"
            )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def refuse_unused(c, defaults) -> None:
    """Raises `UserError` naming the first misfeedback.* or classmate.* key that
    differs from `defaults` (the same config file and variant without the
    command line's overrides) but has no effect on the run: on a method that
    does not sample from the student (sft, kd, seqkd), or, but for ClassKD's
    classmate (trained and its gap logged whatever the weight), while
    misfeedback.weight == 0; also a weight > 0 on GKD that never samples."""
    _refuse_unused_cross(c, defaults)
    m = c.misfeedback
    if c.method in MISFEEDBACK_METHODS + ("classkd",) and m.weight > 0:
        if c.method == "gkd" and c.gkd.lmbda == 0:
            raise UserError(
                "misfeedback.weight > 0 on GKD with gkd.lmbda=0: it never trains on the "
                "student's samples, so the term has no effect; set gkd.lmbda > 0"
            )
        return
    sections = ("misfeedback",) if c.method == "classkd" else ("misfeedback", "classmate")
    for section in sections:
        for key in changed_keys(c[section], defaults[section], section):
            if c.method in MISFEEDBACK_METHODS + ("classkd",):
                if key == "misfeedback.weight":
                    continue
                why = "while misfeedback.weight=0; set misfeedback.weight > 0 (e.g. 0.1) or drop it"
            else:
                why = f"on method {c.method!r}, which does not sample from the student; drop it"
            raise UserError(f"config key {key}={config_value(c, key)!r} has no effect {why}")


def _refuse_unused_cross(c, defaults) -> None:
    """cross_tokenizer.*, teacher.template and teacher.add_bos act only with a
    teacher.tokenizer;
    kd.divergence (KD), gkd.beta (GKD) and ClassKD's divergences only without one
    (the cross-tokenizer loss replaces them)."""
    changed = changed_keys(c.cross_tokenizer, defaults.cross_tokenizer, "cross_tokenizer")
    for key in ("template", "add_bos"):
        if c.teacher.get(key) != defaults.teacher.get(key):
            changed.append(f"teacher.{key}")
    if not c.teacher.tokenizer and changed:
        raise UserError(
            f"config key {changed[0]}={config_value(c, changed[0])!r} has no effect without "
            "teacher.tokenizer (a teacher with another tokenizer); set it or drop the key"
        )
    loss_keys = [k for k in changed if k.startswith("cross_tokenizer.")]
    if c.method == "seqkd" and loss_keys:
        raise UserError(
            f"config key {loss_keys[0]}={config_value(c, loss_keys[0])!r} has no effect with "
            "method='seqkd' (it trains on the text of the teacher's answers); drop it"
        )
    tau = "cross_tokenizer.binarization_temp"
    if c.cross_tokenizer.loss != "alm" and tau in changed:
        raise UserError(
            f"config key {tau}={config_value(c, tau)!r} has no effect with "
            f"cross_tokenizer.loss={c.cross_tokenizer.loss!r} (ALM's only); drop it"
        )
    replaced = {
        "kd": ("kd.divergence",),
        "gkd": ("gkd.beta",),
        "classkd": (
            "classkd.off_policy_divergence",
            "classkd.on_policy_divergence",
            "classmate.divergence",
        ),
    }.get(c.method, ())
    for key in replaced if c.teacher.tokenizer else ():
        if config_value(c, key) != config_value(defaults, key):
            raise UserError(
                f"config key {key}={config_value(c, key)!r} has no effect with "
                "teacher.tokenizer set (cross_tokenizer.loss chooses the loss); drop it"
            )


def changed_keys(section, default, prefix: str) -> list[str]:
    """Dotted keys under `section` whose values differ from `default`'s."""
    out = []
    for key, value in section.items():
        name, base = f"{prefix}.{key}", default.get(key)
        if hasattr(value, "items") and hasattr(base, "items"):
            out += changed_keys(value, base, name)
        elif value != base:
            out.append(name)
    return out


def config_value(c, dotted: str) -> Any:
    for part in dotted.split("."):
        c = c[part]
    return c
