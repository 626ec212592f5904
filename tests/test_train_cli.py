"""`python -m classkd_jax.train` end to end: every method trains, a run resumes
bit-identically after SIGTERM, and the export is a model transformers loads.

In-process runs call `classkd_jax.train.main(argv)`, the function the CLI
runs; the preemption test starts real processes. The session-wide compilation
cache (tests/conftest.py) lets later runs of a config reuse its programs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from classkd_jax import checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# The harness of tests/test_train_steps.py uses the same Adam eps, so the
# ClassKD runs here reuse its compiled step.
SAME_AS_STEP_TESTS = ["--config.student.eps=1e-6", "--config.classmate.eps=1e-6"]


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _train(workdir: Path, method: str, *extra: str) -> list[dict]:
    argv = ["--config", f"configs/{method}.py:size=tiny", "--workdir", str(workdir), *extra]
    assert train.main(argv) == 0
    return _records(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each method (ClassKD longer: the preemption test's reference)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("sft", "kd", "gkd"):
        out[method] = (root / method, _train(root / method, method))
    classkd = root / "classkd"
    out["classkd"] = (classkd, _train(classkd, "classkd", "--config.steps=24", *SAME_AS_STEP_TESTS))
    return out


@pytest.mark.parametrize("method", ["sft", "kd", "gkd", "classkd"])
def test_each_method_trains_with_finite_decreasing_loss(runs, method):
    workdir, records = runs[method]
    steps = [r for r in records if "loss" in r]
    assert all(np.isfinite(r["loss"]) for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"], [r["loss"] for r in steps]
    for r in steps:
        for key in ("step", "loss", "student_grad_norm", "student_lr", "tokens_per_s"):
            assert key in r, key
        assert r["tokens_per_s"] > 0 and 0 <= r["sampling_share"] <= 1 and "mfu" in r
    dev = [r for r in records if "dev_loss" in r]
    assert dev and {"dev_rougeL", "dev_exact_match"} <= set(dev[-1])
    config = json.loads((workdir / "config.json").read_text())
    assert config["method"] == method and config["steps"] == steps[-1]["step"]
    assert (workdir / "student_hf" / "config.json").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoint.latest_step(workdir / "checkpoints") == config["steps"]


def test_each_method_logs_its_own_loss_terms(runs):
    last = {m: [r for r in runs[m][1] if "loss" in r][-1] for m in runs}
    assert "ce" in last["sft"] and "kd" in last["kd"] and "jsd" in last["gkd"]
    c = last["classkd"]
    for key in ("off_kd", "on_kd", "misfeedback", "gap", "classmate_loss", "classmate_lr"):
        assert key in c, key
    assert len(c["gap_by_step"]) == 2 and c["gap_by_step"][-1] == c["gap"]  # log_every=2
    assert c["sampling_share"] > 0 and last["sft"]["sampling_share"] == 0
    # GKD drew both kinds of batch (seed 0, lmbda 0.5): samples and dataset rows.
    assert last["gkd"]["sampling_share"] > 0


def test_gkd_with_seq_kd_trains_on_the_teachers_samples(tmp_path):
    """gkd.seq_kd: the non-student batches are the teacher's samples (TRL's seq_kd)."""
    records = _train(tmp_path / "seqkd", "gkd", "--config.gkd.seq_kd=true", "--config.gkd.lmbda=0")
    steps = [r for r in records if "loss" in r]
    assert all(r["sampling_share"] > 0 for r in steps) and np.isfinite(steps[-1]["loss"])
    # Logged every 2 steps of 8 prompts x 16 new tokens (dataset rows score more).
    assert all(r["scored_tokens_off"] <= 2 * 8 * 16 for r in steps)


def test_a_finished_run_reruns_as_a_no_op(runs):
    workdir, records = runs["sft"]
    before = (workdir / "student_hf" / "model.safetensors").stat().st_mtime_ns
    assert train.main(["--config", "configs/sft.py:size=tiny", "--workdir", str(workdir)]) == 0
    assert _records(workdir) == records
    assert (workdir / "student_hf" / "model.safetensors").stat().st_mtime_ns == before


def test_the_export_loads_in_transformers_with_our_logits(runs, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from classkd_jax import export
    from classkd_jax.models import Transformer

    workdir, _ = runs["kd"]
    out = tmp_path / "best_hf"
    assert export.main(["--workdir", str(workdir), "--out", str(out), "--which", "best"]) == 0
    config, params, _ = checkpoint.load_model(workdir / "best", "student")
    tokens = np.arange(3, 3 + 2 * 24, dtype=np.int32).reshape(2, 24)
    ours = np.asarray(Transformer(config).apply({"params": params}, tokens).logits)
    # The tiny run validates once, at its last step: best and final are one model.
    assert checkpoint.latest_step(workdir / "best") == checkpoint.latest_step(
        workdir / "checkpoints"
    )
    for path in (out, workdir / "student_hf"):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        assert (path / "tokenizer.json").is_file()


def test_generate_samples_from_the_exported_student(runs, tmp_path):
    from classkd_jax import generate

    workdir, _ = runs["sft"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Reverse the words: red green blue"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["--model", str(workdir / "student_hf"), "--prompts", str(prompts), "--out", str(out)]
    assert generate.main([*argv, "--greedy", "--max_new_tokens", "8"]) == 0
    assert isinstance(json.loads(out.read_text())["completion"], str)


def _run_cli(workdir: Path, *extra: str) -> subprocess.Popen:
    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(workdir)]
    cmd = [sys.executable, "-m", "classkd_jax.train", *argv, "--config.steps=24"]
    cmd += [*SAME_AS_STEP_TESTS, *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _state_arrays(workdir: Path) -> dict:
    root = workdir / "checkpoints"
    step = checkpoint.latest_step(root)
    items = ("student_params", "classmate_params", "opt_states", "counters")
    layout = checkpoint.restore_checkpoint(root, dict.fromkeys(items), step)[0]
    return {k: jax.tree.map(np.asarray, v) for k, v in layout.items()}


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(runs, tmp_path):
    reference, _ = runs["classkd"]
    workdir = tmp_path / "preempted"
    proc = _run_cli(workdir)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait until it is mid-run
        if metrics.exists() and any(
            '"step": 4' in line for line in metrics.read_text().splitlines()
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err.decode()[-2000:]
    stopped_at = checkpoint.latest_step(workdir / "checkpoints")
    assert 4 <= stopped_at < 24 and b"rerun the same command to resume" in err

    resumed = _run_cli(workdir)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert f"resuming from step {stopped_at}".encode() in err
    # A quiet terminal: library chatter (Orbax, JAX's backend probe) is in train.log.
    for noise in (b"checkpoint_manager", b"libtpu", b"PyTorch was not found", b"INFO"):
        assert noise not in err, err.decode()[-2000:]
    a, b = _state_arrays(reference), _state_arrays(workdir)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    logged = [r["step"] for r in _records(workdir) if "loss" in r]
    assert logged == list(range(2, 25, 2)), logged  # each step logged once across the stop
