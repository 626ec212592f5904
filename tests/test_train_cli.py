"""`python -m classkd_jax.train` end to end: every method trains, a run resumes
bit-identically after SIGTERM, and the export is a model transformers loads.

In-process runs call `classkd_jax.train.main(argv)`, the function the CLI
runs; the preemption test starts real processes. The session-wide compilation
cache (tests/conftest.py) lets later runs of a config reuse its programs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from classkd_jax import checkpoint, cli, train
from tests.pod import assert_same_weights

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


CLASSKD = ["--config", "configs/classkd.py:size=tiny", "--config.steps=24", *SAME_AS_STEP_TESTS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each method (ClassKD longer: the reference of the preemption,
    SIGKILL, damaged-checkpoint and full-disk tests). While the ClassKD run builds
    step 6, the same command is started again as a real process (a double-submitted
    job): `out['second_run']` is (exit status, output, seconds it took)."""
    from classkd_jax.training.rollout import BatchPlan

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("sft", "kd", "gkd"):
        out[method] = (root / method, _train(root / method, method))
    classkd = root / "classkd"
    original = BatchPlan.batch

    def batch(self, step, *args):
        if step == 6 and "second_run" not in out:
            t0 = time.time()
            argv = [sys.executable, "-m", "classkd_jax.train", *CLASSKD, "--workdir", str(classkd)]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            out["second_run"] = (proc.returncode, proc.stderr, time.time() - t0)
        return original(self, step, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchPlan, "batch", batch)
        out["classkd"] = (classkd, _train(classkd, "classkd", *CLASSKD[2:]))
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
    last = {m: [r for r in runs[m][1] if "loss" in r][-1] for m in ("sft", "kd", "gkd", "classkd")}
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


def test_gkd_as_distillms_mixed_jsd_trains_on_replayed_samples(tmp_path):
    """configs/gkd.py:recipe=distillm: on-policy steps push their samples into the
    replay buffer and train on a batch drawn from it (DistiLLM's mixed-jsd)."""
    workdir = tmp_path / "gkd_distillm"
    argv = ["--config", "configs/gkd.py:size=tiny,recipe=distillm", "--workdir", str(workdir)]
    assert train.main([*argv, "--config.eval_every=0"]) == 0
    steps = [r for r in _records(workdir) if "loss" in r]
    assert all(np.isfinite(r["loss"]) for r in steps)
    # 8 rows pushed per on-policy step (lmbda 0.5), the tiny buffer holds 16.
    assert 0 < steps[-1]["replay_buffer_rows"] <= 16 and steps[-1]["sampling_share"] > 0
    config = json.loads((workdir / "config.json").read_text())
    assert (config["gkd"]["beta"], config["gkd"]["replay"]) == (0.1, True)


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


def _state_arrays(workdir: Path) -> dict:
    root = workdir / "checkpoints"
    step = checkpoint.latest_step(root)
    items = ("student_params", "classmate_params", "opt_states", "counters")
    layout = checkpoint.restore_checkpoint(root, dict.fromkeys(items), step)[0]
    return {k: jax.tree.map(np.asarray, v) for k, v in layout.items()}


def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(
    runs, tmp_path, monkeypatch, capfd
):
    """A real SIGTERM reaches the trainer while it builds step 7 (not a checkpoint
    step): the step in flight finishes, a checkpoint is written, the run exits 143;
    the same command, run again, resumes from disk and ends with the very arrays
    of the uninterrupted run. (Real separate processes: the multi-process tests.)"""
    from classkd_jax.training.rollout import BatchPlan

    reference, _ = runs["classkd"]
    workdir = tmp_path / "preempted"
    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(workdir)]
    argv += ["--config.steps=24", *SAME_AS_STEP_TESTS]
    original = BatchPlan.batch

    def batch(self, step, *args):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *args)

    with monkeypatch.context() as mp:
        mp.setattr(BatchPlan, "batch", batch)
        assert train.main(argv) == 143
    err = capfd.readouterr().err
    stopped_at = checkpoint.latest_step(workdir / "checkpoints")
    assert stopped_at == 7 and "rerun the same command to resume" in err

    assert train.main(argv) == 0
    err = capfd.readouterr().err
    assert f"resuming from step {stopped_at}" in err
    # A quiet terminal: library chatter (Orbax, JAX's backend probe) is in train.log.
    for noise in ("checkpoint_manager", "libtpu", "PyTorch was not found", "INFO"):
        assert noise not in err, err[-2000:]
    a, b = _state_arrays(reference), _state_arrays(workdir)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    logged = [r["step"] for r in _records(workdir) if "loss" in r]
    assert logged == list(range(2, 25, 2)), logged  # each step logged once across the stop


def test_dropout_trains_and_resumes_bit_identically(runs, tmp_path, monkeypatch, capfd):
    """KD with the student's dropout on: the loss is not the dropout-free run's,
    and a run stopped by SIGTERM at step 4 resumes to the uninterrupted run's
    very arrays (the masks come from the step's key, a function of the step)."""
    from classkd_jax.training.rollout import BatchPlan

    argv = lambda w: (
        ["--config", "configs/kd.py:size=tiny", "--workdir", str(w)]
        + ["--config.student.dropout=0.1", "--config.eval_every=0"]
    )
    reference = tmp_path / "reference"
    assert train.main(argv(reference)) == 0
    with_dropout = [r["loss"] for r in _records(reference) if "loss" in r]
    without = [r["loss"] for r in runs["kd"][1] if "loss" in r]
    assert all(np.isfinite(with_dropout)) and with_dropout[0] != without[0]

    workdir = tmp_path / "preempted"
    original = BatchPlan.batch

    def batch(self, step, *args):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, *args)

    with monkeypatch.context() as mp:
        mp.setattr(BatchPlan, "batch", batch)
        assert train.main(argv(workdir)) == 143
    assert checkpoint.latest_step(workdir / "checkpoints") == 4
    assert train.main(argv(workdir)) == 0
    assert "resuming from step 4" in capfd.readouterr().err
    a, b = (
        checkpoint.restore_checkpoint(w / "checkpoints", {"student_params": None}, 6)[0]
        for w in (reference, workdir)
    )
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ----- what survives what (docs/training.md#what-survives-what) -----


def test_a_second_run_on_a_live_workdir_is_refused_in_one_line(runs):
    """The same command started again while the ClassKD run trains (`runs`) exits
    non-zero without waiting for the lock (start-up alone took 53 s once on a
    2-core machine at load 15, hence 100 s, below the fixture's 120 s timeout),
    in one line naming the holder and what to do; the first run finishes
    unharmed (the other tests compare against it) and leaves the workdir free."""
    status, err, seconds = runs["second_run"]
    workdir = runs["classkd"][0]
    lines = err.strip().splitlines()
    assert status == 2 and seconds < 100 and len(lines) == 1, err
    line = lines[0]
    assert line.startswith("python -m classkd_jax.train: error: ") and len(line) <= 300
    assert f"{workdir} is in use by a live run (host " in line
    assert f"pid {os.getpid()}, since " in line and "another --workdir" in line
    assert not (workdir / "workdir.lock").exists()
    assert [r["step"] for r in runs["classkd"][1] if "loss" in r][-1] == 24


def test_three_sigkills_at_random_moments_then_rerun_is_bit_identical(runs, tmp_path):
    """SIGKILL to the whole process group, three times at seeded random moments (one
    during a checkpoint save), the same command rerun each time: the run ends with
    the uninterrupted run's arrays, each step logged once, and every rerun takes over
    the lock the killed run left."""
    from tests.killing import kill_and_rerun

    workdir = tmp_path / "killed"
    argv = [*CLASSKD, "--workdir", str(workdir)]
    attempts = kill_and_rerun(argv, workdir, seed=29, total_steps=24)
    last = attempts[-1]
    assert last.returncode == 0, last.output[-3000:]
    for a in attempts[:-1]:
        assert a.returncode == -signal.SIGKILL and a.killed, a.output[-2000:]
    assert "during the save of" in attempts[1].killed
    for a in attempts[1:]:
        assert "took over the lock of a run that is gone" in a.output, a.output[-2000:]
    jax.tree.map(np.testing.assert_array_equal, _state_arrays(runs["classkd"][0]),
                 _state_arrays(workdir))  # fmt: skip
    logged = [r["step"] for r in _records(workdir) if "loss" in r]
    assert logged == list(range(2, 25, 2)), logged


def _damage_and_rerun(runs, tmp_path, capfd, damage) -> tuple[Path, int, str]:
    workdir = tmp_path / "damaged"
    shutil.copytree(runs["classkd"][0], workdir)
    damage(workdir / "checkpoints" / "24")
    status = cli.run(train.main, [*CLASSKD, "--workdir", str(workdir)], prog=train.PROG)
    return workdir, status, capfd.readouterr().err


def _truncate_a_data_file(step: Path) -> None:
    path = next((step / "student_params" / "d").iterdir())
    os.truncate(path, 10)


def _truncate_the_database(step: Path) -> None:
    for path in (step / "opt_states" / "ocdbt.process_0" / "d").iterdir():
        os.truncate(path, 5)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate_a_data_file, "student_params: a truncated file"),
        (_truncate_the_database, "opt_states: unreadable array data"),
    ],
    ids=["truncated_data_file", "truncated_database"],
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_rerun_is_bit_identical(
    runs, tmp_path, capfd, damage, reason
):
    """Checkpoint 24 of a finished run damaged, the same command rerun: one line says
    which step, why and where it resumes; the damaged step is renamed aside (kept);
    the run resumes from 21 and ends with the uninterrupted run's arrays."""
    workdir, status, err = _damage_and_rerun(runs, tmp_path, capfd, damage)
    assert status == 0, err[-3000:]
    assert "Traceback" not in err and "tensorstore" not in err
    (line,) = [x.strip() for x in err.splitlines() if "cannot be restored" in x]
    aside = f"24.damaged-{reason.replace(': ', '-').replace(' ', '-').replace('_', '-')}"
    assert (
        line
        == f"checkpoint 24 cannot be restored ({reason}); kept as {aside}; resuming from step 21"
    )
    assert (workdir / "checkpoints" / aside).is_dir()
    assert checkpoint.all_steps(workdir / "checkpoints") == [18, 21, 24]
    jax.tree.map(np.testing.assert_array_equal, _state_arrays(runs["classkd"][0]),
                 _state_arrays(workdir))  # fmt: skip


def test_when_no_checkpoint_restores_one_line_says_so_and_nothing_moves(runs, tmp_path, capfd):
    def damage_all(step24: Path) -> None:
        for step in step24.parent.iterdir():
            (step / "meta" / "metadata").write_text("{not json")

    workdir, status, err = _damage_and_rerun(runs, tmp_path, capfd, damage_all)
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err
    assert lines[-1].startswith(
        "python -m classkd_jax.train: error: no checkpoint restores the run (nothing was "
        "moved or deleted): 24 (unreadable metadata), 21 (unreadable metadata), 18"
    )
    assert len(lines[-1]) <= 300
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["18", "21", "24"]


def test_a_save_under_a_file_size_limit_fails_in_one_line_and_the_rerun_resumes(
    runs, tmp_path, capfd
):
    """A file-size limit (RLIMIT_FSIZE, as a full disk) while checkpoint 27 is
    written: one line, the previous checkpoint intact; without the limit the same
    command resumes from it."""
    workdir = tmp_path / "full"
    shutil.copytree(runs["classkd"][0], workdir)
    (workdir / "train.log").rename(workdir / "train.before.log")  # under the limit itself
    argv = [*CLASSKD, "--workdir", str(workdir), "--config.steps=27"]
    # 100 KiB: above every log and metrics file, below the optimizer state's data file.
    # SIGXFSZ ignored: a write past the limit fails with EFBIG instead of killing.
    limited = "trap '' XFSZ; ulimit -f 100; exec \"$@\""
    command = ["bash", "-c", limited, "bash", sys.executable, "-m", "classkd_jax.train", *argv]
    proc = subprocess.run(command, text=True, capture_output=True, timeout=180)
    errors = [x for x in proc.stderr.splitlines() if "error" in x.lower()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and len(errors[0]) <= 300, proc.stderr[-3000:]
    assert "saving checkpoint 27 in" in errors[0] and "(a file-size limit)" in errors[0]
    assert "checkpoint 24 is intact" in errors[0]
    assert checkpoint.latest_step(workdir / "checkpoints") == 24
    assert train.main(argv) == 0
    assert "resuming from step 24" in capfd.readouterr().err
    assert checkpoint.latest_step(workdir / "checkpoints") == 27


# ----- several processes (issue: beyond one machine) -----

COMPARED = ("loss", "off_kd", "on_kd", "misfeedback", "classmate_loss", "gap", "student_grad_norm")


def _two_process_cli(workdir: Path, port: int, *extra: str) -> list[list[str]]:
    argv = ["--config", "configs/classkd.py:size=tiny", "--workdir", str(workdir)]
    # No validation (it does not touch training): fewer programs to compile.
    argv += ["--config.steps=24", "--config.eval_every=0", *SAME_AS_STEP_TESTS, *extra]
    argv += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
    return [
        [sys.executable, "-m", "classkd_jax.train", *argv, "--process_id", str(i)] for i in (0, 1)
    ]


def _four_devices() -> dict:
    flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags}


def _assert_records_match(a: list[dict], b: list[dict]) -> None:
    steps_a = [r for r in a if "loss" in r]
    steps_b = [r for r in b if "loss" in r]
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b]
    for ra, rb in zip(steps_a, steps_b, strict=True):
        for key in COMPARED:
            np.testing.assert_allclose(
                ra[key], rb[key], atol=1e-5, rtol=0, err_msg=(ra["step"], key)
            )


@pytest.fixture(scope="module")
def two_process_run(runs, tmp_path_factory):
    """The ClassKD run of `runs` again, on 2 processes of 4 CPU devices each (gloo),
    preempted part-way as a scheduler preempting one host would: SIGTERM to
    process 1 alone once step 6 is logged. Returns (workdir, exit statuses,
    terminal outputs, the step both stopped after)."""
    from tests.multiprocess import Started, free_port

    workdir = tmp_path_factory.mktemp("two") / "classkd"
    # Checkpoints at 24 only (and where it stops): fewer barriers.
    cmds = _two_process_cli(workdir, free_port(), "--config.checkpoint_every=24")
    started = Started(cmds, _four_devices())
    started.wait_until(lambda: any(r["step"] >= 6 for r in _records_if_any(workdir)))
    started.procs[1].send_signal(signal.SIGTERM)
    status = started.finish(timeout=200)
    stopped_at = checkpoint.latest_step(workdir / "checkpoints")
    return workdir, status, [started.output(0), started.output(1)], stopped_at


def _records_if_any(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines[:-1]]  # the last may be half-written


@pytest.mark.multiprocess
def test_two_processes_train_what_one_process_trains(runs, two_process_run):
    """A mesh spanning 2 processes x 4 devices gives the losses of 1 process x 8 devices,
    step by step (here the 6+ steps before the preemption)."""
    _, records = runs["classkd"]
    workdir, _, logs, stopped_at = two_process_run
    assert "process 0/2" in logs[0] and "stopped by SIGTERM" in logs[0]
    assert "stopped by" not in logs[1]  # process 0 alone reports and writes metrics
    for noise in ("checkpoint_manager", "PyTorch was not found", " INFO "):
        assert noise not in logs[0], logs[0][-2000:]  # a real process's quiet terminal
    # JAX's C++ lines (W1201 12:34:56.789 ...) are in the process's log, not its terminal.
    assert not re.search(r"^([IWEF]\d{4} \d\d:\d\d|\[Gloo\])", logs[0], re.M), logs[0][-2000:]
    assert (workdir / "train.1.log").is_file() and not (workdir / "tensorboard.1").exists()
    two = [r for r in _records(workdir) if r["step"] <= stopped_at]
    one = [r for r in records if r["step"] <= stopped_at]
    assert len([r for r in two if "loss" in r]) >= 3  # steps 2, 4 and 6 at least
    _assert_records_match(one, two)


@pytest.mark.multiprocess
def test_sigterm_to_one_process_stops_both_at_one_step_and_one_process_resumes_on_another_mesh(
    runs, two_process_run, tmp_path
):
    """After SIGTERM to process 1 alone, both processes stop after the same step and
    each exits 143; the checkpoint of that step, restored by 1 process on a
    (4, 2, 1) mesh, trains to the end to the weights and losses of the
    uninterrupted run."""
    import shutil

    source, status, logs, stopped_at = two_process_run
    assert status == [143, 143], logs[0][-3000:]
    assert stopped_at is not None and 6 <= stopped_at <= 21  # 22+: no full window after
    assert f"stopped by SIGTERM at step {stopped_at}" in logs[0]
    assert "Traceback" not in logs[0] + logs[1]

    workdir = tmp_path / "one"
    shutil.copytree(source, workdir)
    argv = ["--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.eval_every=0"]
    argv += ["--config.steps=24", *SAME_AS_STEP_TESTS]
    assert train.main(["--config", "configs/classkd.py:size=tiny", "--workdir", str(workdir),
                       *argv]) == 0  # fmt: skip
    assert_same_weights(runs["classkd"][0] / "student_hf", workdir / "student_hf")
    # Steps logged after the first full window of the resumed run are the reference's.
    after = stopped_at + 2 + stopped_at % 2
    resumed = [r for r in _records(workdir) if "loss" in r and r["step"] >= after]
    expected = [r for r in runs["classkd"][1] if "loss" in r and r["step"] >= after]
    assert resumed and resumed[-1]["step"] == 24
    _assert_records_match(expected, resumed)


@pytest.mark.multiprocess
@pytest.mark.parametrize("dead", [1, 0], ids=["a_worker", "the_coordinator"])
def test_a_dead_process_makes_the_other_fail_fast_with_a_message(tmp_path, dead):
    """One process is killed (SIGKILL) once both are up, process 1 or process 0
    (which hosts JAX's coordination service): the other leaves in bounded time,
    exit 75, with one line naming what happened and where a rerun resumes, and
    neither a Python traceback nor JAX's C++ stack trace on its terminal."""
    from tests.multiprocess import Started, free_port

    workdir = tmp_path / "killed"
    # Killed as soon as both have joined (each has its log): the survivor is still
    # loading, so the death reaches it from JAX's coordination service (at once
    # when process 0 is gone, within the 10 s heartbeat timeout otherwise).
    cmds = _two_process_cli(workdir, free_port(), "--heartbeat_timeout", "10")
    started = Started(cmds, _four_devices())
    logs = (workdir / "train.log", workdir / "train.1.log")
    started.wait_until(lambda: all(log.exists() for log in logs))
    started.procs[dead].kill()
    killed = time.time()
    survivor = 1 - dead
    status = started.finish(timeout=90)
    assert time.time() - killed < 90
    out = started.output(survivor)
    assert status[survivor] == train.EXIT_PEER_LOST, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"python -m classkd_jax.train: error: process {survivor} of 2: ")
    assert "died or stopped responding" in last and "a rerun starts over" in last
    # Named from the coordination service's verdict; a collective that fails first
    # (gloo names an address, not a process) says "another process".
    names = ["process 0 (the coordinator) died"] if dead == 0 else ["process 1 died", "another"]
    assert any(name in last for name in names), last
    assert "Traceback" not in out and "stack trace" not in out
