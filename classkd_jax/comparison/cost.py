"""What a run costs by our FLOP accounting (`classkd_jax.training.flops`), before it runs.

    flops = run_flops(config, train_examples=14000, mean_length=256)

Counts the matmul FLOPs of every part of a method's steps at the config's
shapes (the roles' presets), batch sizes, lengths and schedule: forward F,
forward + backward 3F, cached sampling as `flops.sampling_flops`. Rows are
taken at `mean_length` tokens (the padded length the buckets give) and
samples at the prompt plus the whole generation budget (an upper bound: the
sampler stops at EOS). What the formulas leave out (optimizer updates,
norms, the host) is small next to the matmuls at these sizes; wall-clock
also depends on the sampler, which is bound by memory bandwidth on
accelerators, so the hours `compare --estimate` prints are a floor at the
given utilisation, not a promise.

With `teacher.cache` (`compare --teacher_cache`: the kd, classkd and
distillm rows) the dataset rows' teacher forward leaves the steps; the
teacher runs once over the training examples instead, when the cache is
built (`cache_build_flops`), shared by the rows and seeds whose cache
settings agree (`cache_key`).
"""

from __future__ import annotations

from classkd_jax.models import ModelConfig, get_preset
from classkd_jax.training.flops import forward_flops, sampling_flops
from classkd_jax.training.objectives import uses_cache


def _model(role) -> ModelConfig:
    shape = {k: v for k, v in role.shape.items() if v is not None}
    return get_preset(role.preset, **shape)


def total_steps(config, train_examples: int) -> int:
    if int(config.steps) > 0:
        return int(config.steps)
    per_step = int(config.data.batch_size)
    return max(int(float(config.epochs) * train_examples / per_step), 1)


def step_flops(config, mean_length: int) -> float:
    """Expected FLOPs of one optimizer step of `config.method`; a sampling
    baseline's `+mf` adds the classmate's update on the step's rows (every
    `update_every` steps) and its forward on them for the misfeedback."""
    flops = _method_step_flops(config, mean_length)
    if config.method in ("gkd", "distillm", "minillm") and float(config.misfeedback.weight) > 0:
        student = _model(config.student)
        classmate = _model(config.classmate) if config.classmate.path else student
        rows, length = int(config.data.batch_size), int(mean_length)
        forward = forward_flops(classmate, rows, length)
        flops += 3 * forward / max(int(config.classmate.update_every), 1) + forward
    return flops


def _method_step_flops(config, mean_length: int) -> float:
    method = config.method
    student = _model(config.student)
    teacher = _model(config.teacher)
    rows, length = int(config.data.batch_size), int(mean_length)
    prompt = int(config.data.max_prompt_length) // 2
    new = int(config.sampling.max_new_tokens)
    s_rows = int(config.sampling.batch_size) or rows

    def train(model, r, n):  # forward + backward
        return 3 * forward_flops(model, r, n)

    off = train(student, rows, length)
    # the dataset rows' teacher: live, or read from the cache (no forward)
    off_kd = off + (0.0 if uses_cache(config) else forward_flops(teacher, rows, length))
    sample = sampling_flops(student, s_rows, prompt, new, new)
    on = (
        sample + train(student, s_rows, prompt + new) + forward_flops(teacher, s_rows, prompt + new)
    )
    if method in ("sft", "seqkd"):
        return off
    if method == "kd":
        return off_kd
    if method == "gkd":
        lmbda = float(config.gkd.lmbda)
        return (1 - lmbda) * off_kd + lmbda * on
    if method == "distillm":
        phi = 0.5  # phi is adaptive; half the steps sampling (replay steps cost less)
        return (1 - phi) * off_kd + phi * on
    if method == "classkd":
        k = config.classkd
        classmate = _model(config.classmate) if config.classmate.path else student
        cm = train(classmate, rows, length) / max(int(config.classmate.update_every), 1)
        mis = forward_flops(classmate, s_rows, prompt + new)
        return off_kd + cm + float(k.lmbda) * (on + mis)
    if method == "minillm":
        m = config.minillm
        per_step = rows / max(int(m.ppo_epochs), 1)  # rollouts made per optimizer step
        mixed = sampling_flops(student, 1, prompt, new, new) + sampling_flops(
            teacher, 1, prompt, new, new
        )
        scoring = forward_flops(student, 1, prompt + new) + forward_flops(teacher, 1, prompt + new)
        update = train(student, rows, prompt + new) + forward_flops(teacher, rows, prompt + new)
        lm = off_kd if config.data.lm_path else 0.0
        return per_step * (mixed + scoring) + update + lm
    raise ValueError(f"no FLOP formula for method={method!r}")


def cache_key(config) -> tuple | None:
    """What a run's teacher cache depends on here (the teacher, the loss temperature,
    N, k and the draws' seed): runs with equal keys share one build; None when the
    run reads no cache."""
    if not uses_cache(config):
        return None
    from classkd_jax.teacher_cache.builder import cache_temperature

    t = config.teacher_cache
    teacher = (config.teacher.preset, config.teacher.path)
    return teacher, cache_temperature(config), int(t.num_samples), int(t.top_k), int(t.seed)


def cache_build_flops(config, *, train_examples: int, mean_length: int) -> float:
    """The teacher's forward once over the training examples (`mean_length` tokens
    each): building the cache. The dev split's share, when the run validates, is
    left out (a few hundred examples)."""
    return forward_flops(_model(config.teacher), train_examples, mean_length)


def run_flops(config, *, train_examples: int, mean_length: int) -> float:
    """FLOPs of the whole run (SeqKD: plus the teacher answering every training prompt once)."""
    total = total_steps(config, train_examples) * step_flops(config, mean_length)
    if config.method == "seqkd":
        prompt = int(config.data.max_prompt_length) // 2
        new = int(config.sampling.max_new_tokens)
        total += sampling_flops(_model(config.teacher), train_examples, prompt, new, new)
    return total
