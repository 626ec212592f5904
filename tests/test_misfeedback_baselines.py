"""ClassKD's misfeedback term on the sampling baselines (their `+mf` variants).

GKD, DistiLLM and MiniLLM with `misfeedback.weight > 0` add the term on the
student's samples and train a classmate as ClassKD does; with weight 0 (the
default) they are the plain method: no classmate, no 'control' batch, the
same program. Step-level, through the real jitted step (as
tests/test_train_steps.py): fixed sample rows of real prompts, so every run
trains on the same tokens. One CLI run (GKD+mf) checks the classmate's export.
"""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest

from classkd_jax import checkpoint, cli, train
from classkd_jax.config_utils import import_sibling, with_changes
from classkd_jax.data import to_global
from classkd_jax.sharding import make_mesh
from classkd_jax.training import checks, objectives, roles
from classkd_jax.training.rollout import BatchPlan
from classkd_jax.training.run import build_models, initial_state
from classkd_jax.training.state import params_shardings, run_state_shardings
from classkd_jax.training.step import StepBuilder, scored_batch
from tests.test_train_steps import STEPS, host_batches

METHODS = ("gkd", "distillm", "minillm")
MF = {"misfeedback.weight": 0.1}


def tiny(method: str, **changes):
    """The method's tiny config with `changes` (Adam's eps raised as in test_train_steps)."""
    config = import_sibling("configs/x.py", method).get_config("size=tiny")
    changes = {"student.eps": 1e-6, "classmate.eps": 1e-6, **changes}
    return with_changes(config, changes)


def _rollouts(on: dict, vocab: int) -> dict:
    """MiniLLM's scored rollout rows from fixed samples, with stored values."""
    batch = jax.device_get(scored_batch(jax.tree.map(np.asarray, on)))
    rng = np.random.default_rng(1)
    mask = batch["loss_mask"].astype(np.float32)
    batch["old_logprobs"] = np.full(mask.shape, -np.log(vocab), np.float32) * mask
    batch["importance_weights"] = mask.copy()
    batch["rewards"] = (rng.normal(size=mask.shape) * mask).astype(np.float32)
    return batch


class Harness:
    """One method's config on the 8-device mesh: its models and jitted step."""

    def __init__(self, config):
        self.config, self.mesh = config, make_mesh(data=-1)
        tokenizer, where = roles.resolve_tokenizer(config)
        context, why = checks.context_length(config)
        self.sources = roles.plan_roles(config, tokenizer, where, context, why)
        self.models = build_models(config, self.sources, config.steps, len(tokenizer))
        self.teacher = roles.load_params(self.sources["teacher"], self.mesh, (0, 1))
        self.builder = StepBuilder(config, self.models, self.mesh)
        opt = lambda r: None if r is None else (r.config, r.optimizer)
        shardings = run_state_shardings(
            self.mesh, opt(self.models.student), opt(self.models.classmate)
        )
        frozen_sh = {"teacher": params_shardings(self.models.teacher.config, self.mesh)}
        self.step = self.builder.jit(shardings, frozen_sh)
        name = "on" if config.method == "minillm" else "off"
        self.batches = [
            {name: _rollouts(b["on"], len(tokenizer)) if name == "on" else b["on"]}
            for b in host_batches(config, tokenizer)
        ]

    def run(self, config=None):
        """STEPS steps on the student's samples; `config` changes host-side values only."""
        config = config or self.config
        state = initial_state(self.config, self.models, self.sources, self.mesh)
        history = []
        for t, batch in enumerate(self.batches):
            placed = {k: to_global(v, self.builder.rows) for k, v in batch.items()}
            if objectives.has_classmate(config):
                placed["control"] = objectives.control(config, t)
            state, metrics = self.step(state, {"teacher": self.teacher}, placed, jax.random.key(t))
            history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        return jax.device_get(state), history


@pytest.fixture(scope="module", params=METHODS)
def runs(request):
    """Per method: the plain run, and +mf runs at two classmate learning rates."""
    method = request.param
    plain = Harness(tiny(method))
    mf = Harness(tiny(method, **MF))
    other_lr = Harness(tiny(method, **MF, **{"classmate.lr": 3e-2}))
    return method, plain, mf, other_lr


def _differs(a, b) -> bool:
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_weight_zero_is_the_plain_method_with_no_classmate(runs):
    method, plain, mf, _ = runs
    assert float(plain.config.misfeedback.weight) == 0.0  # the default
    assert plain.models.classmate is None and "classmate" not in plain.sources
    for part in objectives.student_parts(plain.config):
        assert "classmate" not in part.others and "weight" not in part.extras
    state, history = plain.run()
    assert state.classmate is None and "misfeedback" not in history[0]
    # The +mf program with its weight held at 0 trains the very same student.
    late = tiny(method, **MF, **{"misfeedback.start_step": STEPS})
    zero_state, zero_history = mf.run(late)
    assert [m["misfeedback_weight"] for m in zero_history] == [0.0] * STEPS
    jax.tree.map(np.testing.assert_array_equal, state.student.params, zero_state.student.params)


def test_the_classmate_reaches_the_student_and_its_lr_matters(runs):
    method, plain, mf, other_lr = runs
    assert mf.models.classmate is not None
    base, _ = plain.run()
    a, history = mf.run()
    b, _ = other_lr.run()
    first = history[0]
    assert first["misfeedback_weight"] == pytest.approx(0.1)
    assert first["classmate_updated"] == 1.0 and np.isfinite(first["misfeedback"])
    assert int(a.classmate.step) >= 1 and "gap" in first
    assert _differs(a.student.params, base.student.params)
    assert _differs(a.classmate.params, b.classmate.params)
    assert _differs(a.student.params, b.student.params)


def test_misfeedback_only_on_the_students_samples():
    """The host plan's weight is 0 on a GKD step of dataset rows (`control`)."""
    config = tiny("gkd", **MF)
    assert objectives.control(config, 0, samples=False)["misfeedback_weight"] == 0.0
    assert objectives.control(config, 0)["misfeedback_weight"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "method, flags, words",
    [
        ("gkd", ["--config.classmate.lr=3e-2"], "classmate.lr=0.03 has no effect while"),
        ("minillm", ["--config.misfeedback.variant=raw"], "misfeedback.variant='raw' has no"),
        ("kd", ["--config.misfeedback.weight=0.1"], "on method 'kd', which does not sample"),
        ("sft", ["--config.classmate.update_every=2"], "classmate.update_every=2 has no"),
        (
            "gkd",
            ["--config.misfeedback.weight=0.1", "--config.gkd.lmbda=0"],
            "never trains on the student's samples",
        ),
    ],
)
def test_keys_without_effect_are_refused_in_one_line(tmp_path, method, flags, words):
    argv = ["--config", f"configs/{method}.py:size=tiny", "--workdir", str(tmp_path), *flags]
    with pytest.raises(cli.UserError, match=words.replace("(", r"\(")) as e:
        train.parse_flags(argv)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec, flags",
    [
        ("configs/classkd.py:size=tiny", ["--config.classmate.lr=3e-2"]),
        ("configs/classkd.py:size=tiny", ["--config.misfeedback.weight=0"]),
        ("configs/gkd.py:size=tiny", ["--config.misfeedback.weight=0"]),
        ("configs/demo.py:method=kd,size=tiny", []),
        (
            "configs/gkd.py:size=tiny",
            ["--config.misfeedback.weight=0.1", "--config.classmate.lr=3e-2"],
        ),
    ],
)
def test_keys_with_effect_are_accepted(tmp_path, spec, flags):
    config, _ = train.parse_flags(["--config", spec, "--workdir", str(tmp_path), *flags])
    checks.validate(config)


def _gkd_mf_argv(workdir) -> list[str]:
    argv = ["--config", "configs/gkd.py:size=tiny", "--workdir", str(workdir)]
    argv += ["--config.steps=4", "--config.eval_every=0", "--config.misfeedback.weight=0.1"]
    return argv + ["--config.student.eps=1e-6", "--config.classmate.eps=1e-6"]


@pytest.fixture(scope="module")
def gkd_mf_run(tmp_path_factory):
    """One CLI run of GKD+mf (4 steps, checkpoints at 3 and 4)."""
    workdir = tmp_path_factory.mktemp("gkd_mf") / "run"
    assert train.main(_gkd_mf_argv(workdir)) == 0
    return workdir


def _records(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _final(workdir) -> dict:
    items = ("student_params", "classmate_params", "opt_states", "counters")
    arrays, _ = checkpoint.restore_checkpoint(workdir / "checkpoints", dict.fromkeys(items))
    return jax.tree.map(np.asarray, arrays)


def test_gkd_mf_cli_run_exports_its_classmate(gkd_mf_run, tmp_path):
    from classkd_jax import export

    records = [r for r in _records(gkd_mf_run) if "loss" in r]
    assert records and all(np.isfinite(r["misfeedback"]) and "gap" in r for r in records)
    out = tmp_path / "classmate_hf"
    assert (
        export.main(["--workdir", str(gkd_mf_run), "--out", str(out), "--role", "classmate"]) == 0
    )
    assert (out / "model.safetensors").is_file()


def test_gkd_mf_sigterm_then_resume_is_bit_identical(gkd_mf_run, tmp_path, monkeypatch):
    """A real SIGTERM while step 2 is built: the run checkpoints (classmate and its
    gap statistics included) and exits 143; the rerun ends with the uninterrupted
    run's student, classmate and optimizer states."""
    workdir = tmp_path / "run"
    original = BatchPlan.batch

    def batch(self, step, *args):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *args)

    with monkeypatch.context() as mp:
        mp.setattr(BatchPlan, "batch", batch)
        assert train.main(_gkd_mf_argv(workdir)) == 143
    assert checkpoint.latest_step(workdir / "checkpoints") == 3
    assert train.main(_gkd_mf_argv(workdir)) == 0
    jax.tree.map(np.testing.assert_array_equal, _final(gkd_mf_run), _final(workdir))
