"""Train steps: they learn, they shard, and the quick-start job runs end to end."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classkd_jax import steps
from classkd_jax.models import get_preset, init_params
from classkd_jax.sharding import make_mesh

STUDENT = get_preset("tiny-llama")
# Same shapes as the student (another random init), so the KD step compiled
# for the tests below also serves the "student == teacher" check.
TEACHER = STUDENT
OPTIMIZER = steps.make_optimizer(1e-2, 12, warmup_steps=0)


def _batch(seed=0, batch=8, length=16):
    """A right-padded prompt+response batch in the data package's layout."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, STUDENT.vocab_size, (batch, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, batch)
    segment_ids = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    tokens = np.where(segment_ids == 1, tokens, 0)
    targets = np.concatenate([tokens[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
    # Positions 3.. predict response tokens (those after a 4-token prompt).
    loss_mask = (np.arange(length)[None] >= 3) & (np.arange(length)[None] < lengths[:, None] - 1)
    return {
        "tokens": tokens,
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
        "segment_ids": segment_ids,
        "targets": targets,
        "loss_mask": loss_mask.astype(np.float32),
    }


class _Setup:
    """One mesh's compiled init and steps, shared by the tests (compiles dominate)."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.initial = steps.init_state(STUDENT, OPTIMIZER, jax.random.key(0), mesh)
        self.teacher = init_params(TEACHER, jax.random.key(1))
        self.step = {
            loss: steps.make_train_step(STUDENT, OPTIMIZER, mesh, loss=loss, teacher_config=TEACHER)
            for loss in ("sft", "kd")
        }
        self.batch = jax.device_put(_batch(), steps.batch_sharding(mesh))

    def run(self, loss, n_steps, teacher=None):
        state = jax.tree.map(jnp.copy, self.initial)  # the step donates its state
        teacher = self.teacher if teacher is None else teacher
        losses = []
        for _ in range(n_steps):
            state, m = self.step[loss](state, teacher, self.batch)
            losses.append(float(m["loss_sum"] / m["tokens"]))
        return state, losses


@pytest.fixture(scope="module")
def eight_devices():
    return _Setup(make_mesh(data=-1))


@pytest.mark.parametrize("loss", ["sft", "kd"])
def test_training_on_a_fixed_batch_lowers_the_loss(eight_devices, loss):
    _, losses = eight_devices.run(loss, n_steps=12)
    assert losses[-1] < 0.7 * losses[0], losses


def test_sharded_step_equals_single_device_step(eight_devices):
    assert jax.device_count() == 8
    sharded, l8 = eight_devices.run("kd", n_steps=2)
    single, l1 = _Setup(make_mesh(data=1, devices=jax.devices()[:1])).run("kd", n_steps=2)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params), strict=True):
        # Adam turns reduction-order noise in near-zero grads into ~1e-5 steps.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)


def test_kd_loss_is_zero_when_student_is_the_teacher(eight_devices):
    student_params = jax.tree.map(jnp.copy, eight_devices.initial.params)
    _, losses = eight_devices.run("kd", n_steps=1, teacher=student_params)
    assert abs(losses[0]) < 1e-5


def test_unknown_loss_and_divergence_are_named():
    mesh = make_mesh(data=-1)
    with pytest.raises(ValueError, match="loss='dpo'"):
        steps.make_train_step(STUDENT, OPTIMIZER, mesh, loss="dpo")
    with pytest.raises(ValueError, match="kl_forward"):
        steps.make_train_step(
            STUDENT, OPTIMIZER, mesh, teacher_config=TEACHER, divergence="kl_forward"
        )


@pytest.mark.slow
def test_quick_start_job_runs_end_to_end(tmp_path):
    """`python -m classkd_jax.demo` (tiny size): trains, evaluates, exports a HF student
    and a checkpoint of every trained model."""
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "classkd_jax.demo",
            "--config",
            "configs/demo.py:size=tiny",
            f"--config.workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) == {"teacher-sft", "student-kd", "student-sft"}
    for metrics in results.values():
        assert 0.0 <= metrics["rougeL"] <= 100.0 and metrics["n"] == 16
    curves = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {c["role"] for c in curves} == set(results)
    assert (workdir / "student_hf" / "config.json").exists()
    assert "| student-kd |" in proc.stdout
    # The checkpoint holds every trained model by role; its student is the exported one.
    from classkd_jax import checkpoint
    from classkd_jax.models import load_hf

    ckpt = workdir / "checkpoints"
    assert set(checkpoint.read_meta(ckpt)["models"]) == {"teacher", "student", "sft_student"}
    config, params, _ = checkpoint.load_model(ckpt, "student")
    hf_config, hf_params = load_hf(workdir / "student_hf")
    assert config.hidden_size == hf_config.hidden_size
    jax.tree.map(np.testing.assert_array_equal, params, hf_params)
