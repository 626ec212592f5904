"""The trainer's configs: every method has the contract's keys, every variant builds,
and every out-of-range value is an error that names its key (no JAX compile here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from classkd_jax.cli import UserError
from classkd_jax.config_utils import import_sibling, with_changes
from classkd_jax.training import checks, objectives

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = ("sft", "kd", "gkd", "classkd", "seqkd", "distillm", "minillm")
PAIRS = tuple(import_sibling(str(CONFIGS / "x.py"), "_base").PAIRS)

# The keys other tools call the trainer with (issue: "the command, a contract").
CONTRACT = (
    "steps",
    "seed",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "checkpoint_every",
    "log_every",
    "eval_every",
    "teacher.path",
    "student.path",
    "classmate.path",
    "student.lr",
    "classmate.lr",
    "data.source",
    "data.path",
    "data.dev_path",
    "data.dev_num",
    "sampling.max_new_tokens",
    "sampling.temperature",
    "sampling.top_p",
    "sampling.top_k",
    "gkd.lmbda",
    "gkd.beta",
    "misfeedback.weight",
    "misfeedback.variant",
    "misfeedback.start_step",
    "misfeedback.warmup_steps",
    "classmate.start_step",
    "classmate.update_every",
    "classmate.min_gap",
    "tokenizer",
)


def method_config(method: str, arg: str | None = "size=tiny"):
    return import_sibling(str(CONFIGS / f"{method}.py"), method).get_config(arg)


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["size=tiny", None, *(f"pair={p}" for p in PAIRS)])
def test_every_method_and_variant_builds_locked_with_the_contract_keys(method, variant):
    config = method_config(method, variant)
    assert config.is_locked and config.method == method
    for key in CONTRACT:
        _get(config, key)  # raises KeyError/AttributeError when missing
    checks.validate(config)


def test_pairs_are_the_ones_users_run():
    assert set(PAIRS) == {
        "gpt2-xl/gpt2",
        "gpt2-xl/gpt2-medium",
        "gpt2-xl/gpt2-large",
        "qwen2.5-7b/qwen2.5-1.5b",
        "qwen2.5-7b/qwen2.5-0.5b",
        "llama-3.2-3b/llama-3.2-1b",
        "llama-3.1-8b/llama-3.2-1b",
        "qwen3-8b/qwen3-0.6b",
        "qwen3-8b/qwen3-1.7b",
        "gemma-3-12b/gemma-3-1b",
        "gemma-2-9b/gemma-2-2b",
    }
    config = method_config("classkd", "pair=gpt2-xl/gpt2-large")
    assert config.teacher.preset == "gpt2-xl" and config.student.preset == "gpt2-large"
    assert config.student.lr == 1e-4 and config.epochs == 10 and config.steps == 0
    assert config.classmate.path == ""  # the student's initial weights


@pytest.mark.parametrize("pair", PAIRS)
def test_pairs_compute_in_bfloat16_with_float32_trained_params(pair):
    """MaxText's dtype / weight_dtype: the trained roles keep float32 params (and
    so float32 Adam moments), the frozen teacher bfloat16 ones; all compute in
    bfloat16, and the trained roles rematerialise their blocks."""
    config = method_config("classkd", f"pair={pair}")
    for role in ("teacher", "student", "classmate"):
        assert config[role].dtype == "bfloat16"
    assert config.teacher.param_dtype == "bfloat16"
    for role in ("student", "classmate"):
        assert config[role].param_dtype == "float32" and config[role].remat in ("full", "dots")


def test_the_baselines_carry_their_reference_recipes():
    base = method_config("distillm", "pair=gpt2-xl/gpt2").distillm
    assert (base.divergence, base.alpha, base.init_phi, base.capacity) == (
        "skew_forward_kl", 0.1, 0.0, 1000
    )  # fmt: skip
    for student in ("gpt2-medium", "gpt2-large"):
        d = method_config("distillm", f"pair=gpt2-xl/{student}").distillm
        assert d.divergence == "skew_reverse_kl"  # the recipes for medium and large
    assert method_config("distillm", "pair=gpt2-xl/gpt2").lm.kd_ratio == 0.0  # plain CE
    m = method_config("minillm", "pair=gpt2-xl/gpt2")
    assert (m.minillm.teacher_mix, m.minillm.num_rollouts, m.minillm.ppo_epochs) == (0.2, 256, 4)
    assert (m.minillm.gamma, m.minillm.reward_scaling, m.minillm.clip_ratio) == (0.95, 0.5, 0.2)
    assert (m.student.lr, m.student.schedule, m.student.warmup_steps) == (5e-6, "constant", 100)
    assert (m.student.b2, m.student.weight_decay, m.steps) == (0.95, 1e-6, 5000)
    assert m.lm.kd_ratio == 0.5 and m.lm.coef == 1.0


def test_minillm_and_distillm_pairs_have_the_references_batch_phase_and_cadence():
    """MiniLLM: the global batch of the reference's 16 GPUs (256 for gpt2, 64 for
    medium/large), 256 rollouts and 4 PPO epochs a phase, the LM stream at the
    same batch. DistiLLM: validation once an epoch, a buffer of 125 batches."""
    for pair, batch, growth in (("gpt2-xl/gpt2", 256, 4), ("gpt2-xl/gpt2-large", 64, 2)):
        c = method_config("minillm", f"pair={pair}")
        base = method_config("kd", f"pair={pair}")  # the pair's batch and micro-batch
        assert (c.data.batch_size, c.data.lm_batch_size) == (batch, 0)
        assert c.grad_accum == growth * base.grad_accum and batch == growth * base.data.batch_size
        assert c.sampling.batch_size == base.data.batch_size  # sampled and scored as before
        steps_per_phase = c.minillm.ppo_epochs * c.minillm.num_rollouts // c.data.batch_size
        assert steps_per_phase == 4 * 256 // batch
    c = method_config("distillm", "pair=gpt2-xl/gpt2")
    assert checks.replay_capacity(c) == 125 * c.data.batch_size
    assert checks.eval_interval(c, batches_per_epoch=37) == 37  # once per epoch
    with c.unlocked():
        c.eval_every_epochs = 0.5
    assert checks.eval_interval(c, batches_per_epoch=37) == 18 and checks.validates(c)
    tiny = method_config("distillm")  # rows and steps as given
    assert (checks.replay_capacity(tiny), checks.eval_interval(tiny, 37)) == (16, tiny.eval_every)
    with tiny.unlocked():
        tiny.eval_every = 0
        tiny.eval_every_epochs = 1.0
    checks.validate(tiny)  # adaptive phi is satisfied by epoch validation


@pytest.mark.parametrize(
    "method, key, value, message",
    [
        ("distillm", "distillm.alpha", 1.0, r"distillm\.alpha=1\.0"),
        ("distillm", "distillm.divergence", "forward_kl", r"distillm\.divergence='forward_kl'"),
        ("distillm", "distillm.capacity", 4, r"distillm\.capacity=4 .*data\.batch_size \(8\)"),
        ("distillm", "eval_every", 0, r"distillm\.adaptive=True .*eval_every=0"),
        ("minillm", "minillm.num_rollouts", 12, r"minillm\.num_rollouts=12 .*multiple"),
        ("minillm", "minillm.teacher_mix", 1.5, r"minillm\.teacher_mix=1\.5"),
        ("minillm", "lm.kd_ratio", 2.0, r"lm\.kd_ratio=2\.0"),
        ("seqkd", "seqkd.batch_size", 0, r"seqkd\.batch_size=0"),
    ],
)
def test_a_baseline_value_out_of_range_names_its_key(method, key, value, message):
    config = with_changes(method_config(method), {key: value})
    with pytest.raises(UserError, match=message):
        checks.validate(config)


def test_an_unknown_variant_is_named():
    with pytest.raises(ValueError, match="pair='gpt2/gpt3'"):
        method_config("kd", "pair=gpt2/gpt3")
    with pytest.raises(ValueError, match="size='huge'"):
        method_config("kd", "size=huge")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("gkd.lmbda", 1.5, r"gkd\.lmbda=1\.5 .*\[0, 1\]"),
        ("gkd.beta", -0.1, r"gkd\.beta=-0\.1"),
        ("student.lr", 0.0, r"student\.lr=0\.0 .*> 0"),
        ("misfeedback.variant", "hard", r"misfeedback\.variant='hard'.*'skew'"),
        ("classmate.update_every", 0, r"classmate\.update_every=0"),
        ("sampling.top_p", 0.0, r"sampling\.top_p=0\.0"),
        ("mesh.data", 0, r"mesh\.data=0"),
        ("classkd.on_policy_divergence", "kl", r"classkd\.on_policy_divergence='kl'"),
        ("steps", -1, r"steps=-1"),
    ],
)
def test_a_value_out_of_range_names_its_key(key, value, message):
    config = with_changes(method_config("classkd"), {key: value})
    with pytest.raises(UserError, match=message):
        checks.validate(config)


def test_steps_come_from_epochs_when_steps_is_zero():
    config = method_config("sft")
    assert checks.total_steps(config, batches_per_epoch=100) == config.steps
    with config.unlocked():
        config.steps, config.epochs = 0, 2.5
    assert checks.total_steps(config, batches_per_epoch=100) == 250


def test_the_context_covers_training_rows_sampling_and_validation():
    config = method_config("classkd")
    d = config.data
    need, why = checks.context_length(config)
    assert need == max(d.max_length, d.max_prompt_length + config.sampling.max_new_tokens)
    with config.unlocked():
        config.eval.max_new_tokens = 200
    need, why = checks.context_length(config)
    assert need == d.max_prompt_length + 200 and "eval.max_new_tokens" in why


def test_schedules_are_host_values_of_the_step():
    config = method_config("classkd")
    with config.unlocked():
        config.misfeedback.weight = 0.3
        config.misfeedback.start_step = 2
        config.misfeedback.warmup_steps = 4
        config.classmate.start_step = 1
        config.classmate.update_every = 3
        config.classmate.stop_step = 8
    weights = [objectives.misfeedback_weight(config, t) for t in range(8)]
    assert weights == pytest.approx([0, 0, 0.075, 0.15, 0.225, 0.3, 0.3, 0.3])
    updates = [objectives.classmate_scheduled(config, t) for t in range(10)]
    assert updates == [False, True, False, False, True, False, False, True, False, False]


def test_learning_rate_schedules_warm_up_then_decay_to_their_floor():
    from classkd_jax.training.optim import learning_rate_schedule

    block = {"lr": 1.0, "warmup_steps": 2, "final_lr_ratio": 0.1}
    for kind, middle in (("cosine", 0.55), ("linear", 0.55), ("constant", 1.0)):
        lr = learning_rate_schedule({**block, "schedule": kind}, total_steps=12)
        assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(0.5)
        assert float(lr(2)) == pytest.approx(1.0)
        assert float(lr(7)) == pytest.approx(middle, abs=1e-6)
        assert float(lr(12)) == pytest.approx(1.0 if kind == "constant" else 0.1)
