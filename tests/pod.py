"""Pod runs on one CPU machine: every method through the real CLI on 2 processes
x 4 devices, and its 1-process reference, for tests/test_pod_runs_*.py.

`pod_run(method, root)` trains `configs/<method>.py:size=tiny` twice (`<method>+mf`:
the method with ClassKD's misfeedback term and classmate, weight 0.1):
  * on 2 processes of 4 CPU devices each (gloo), mesh (data 2, fsdp 4): validation
    and checkpoints at step 2 and at the end (step 4), the export to `student_hf`;
  * on 1 process of 8 devices, on the mesh `REFERENCE_MESH[method]`.
Both run with a compilation cache of their own, so every program is compiled
(and XLA's partitioner warnings, if any, land in their logs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.multiprocess import Started, free_port

METHODS = ("sft", "kd", "seqkd", "gkd", "minillm", "distillm", "classkd")
# Each 1-process reference runs on another mesh, so between them every method's
# programs are also compiled on (8, 1, 1), (2, 2, 2) and (1, 4, 2).
REFERENCE_MESH = {
    "sft": (8, 1, 1),
    "kd": (1, 4, 2),
    "seqkd": (2, 2, 2),
    "gkd": (1, 4, 2),
    "minillm": (2, 2, 2),
    "distillm": (8, 1, 1),
    "classkd": (1, 4, 2),
    "distillm+mf": (8, 1, 1),
}
# The `+mf` twin's keys (as `compare --methods M+mf` sets them).
MISFEEDBACK = ["--config.misfeedback.weight=0.1", "--config.classmate.update_every=1"]
COMMON = [
    "--config.steps=4",
    "--config.log_every=1",
    "--config.eval_every=2",
    "--config.checkpoint_every=2",
]
# A replay buffer full after one sampled batch, so that the 4 steps sample (step 2)
# and replay (step 4) on both runs.
EXTRA = {"distillm": ["--config.distillm.capacity=8"]}
EXTRA["distillm+mf"] = EXTRA["distillm"] + MISFEEDBACK
# Per-step values compared between the runs (when the method logs them).
COMPARED = (
    "loss",
    "ce",
    "kd",
    "jsd",
    "off_kd",
    "on_kd",
    "misfeedback",
    "classmate_loss",
    "student_grad_norm",
    "dev_loss",
    "dev_kd",
)
REMAT_WARNING = "Involuntary full rematerialization"
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class PodRun:
    method: str
    two: Path  # the 2-process workdir
    one: Path  # the 1-process workdir
    status: list[int]
    outputs: list[str]  # the 2 processes' terminals
    reference_output: str  # the 1-process run's terminal (stdout + stderr)
    reference_status: int


def _env(devices: int, cache: Path) -> dict:
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags, "JAX_COMPILATION_CACHE_DIR": str(cache)}


def _argv(method: str, workdir: Path, mesh: tuple[int, int, int]) -> list[str]:
    data, fsdp, tensor = mesh
    return [
        "--config",
        f"configs/{method.removesuffix('+mf')}.py:size=tiny",
        "--workdir",
        str(workdir),
        *COMMON,
        f"--config.mesh.data={data}",
        f"--config.mesh.fsdp={fsdp}",
        f"--config.mesh.tensor={tensor}",
        *EXTRA.get(method, []),
    ]


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "classkd_jax.train", *args]


def pod_run(method: str, root: Path) -> PodRun:
    two, one = root / f"{method}-2proc", root / f"{method}-1proc"
    port = free_port()
    cmds = [
        train_command(
            *_argv(method, two, (2, 4, 1)),
            "--coordinator_address",
            f"127.0.0.1:{port}",
            "--num_processes",
            "2",
            "--process_id",
            str(i),
        )
        for i in (0, 1)
    ]
    started = Started(cmds, _env(4, root / f"{method}-cache2"))
    status = started.finish(timeout=300)
    reference = subprocess.run(
        train_command(*_argv(method, one, REFERENCE_MESH[method])),
        env=_env(8, root / f"{method}-cache1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return PodRun(
        method,
        two,
        one,
        status,
        [started.output(0), started.output(1)],
        reference.stdout + reference.stderr,
        reference.returncode,
    )


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    """The same records (steps and dev evaluations), compared key by key to 1e-5."""
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["step"] == rb["step"]
        for key in COMPARED:
            if key in ra:
                np.testing.assert_allclose(
                    ra[key], rb[key], atol=1e-5, rtol=0, err_msg=(ra["step"], key)
                )


def exported(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = exported(a), exported(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=atol, rtol=0, err_msg=key)


def check_pod_run(run: PodRun) -> None:
    """What every method's pod run must show (see tests/test_pod_runs_*.py)."""
    assert run.status == [0, 0], run.outputs[0][-3000:] + run.outputs[1][-3000:]
    assert run.reference_status == 0, run.reference_output[-3000:]
    terminal = run.outputs[0] + run.outputs[1]
    assert "Traceback" not in terminal and "done:" in run.outputs[0], run.outputs[0][-3000:]
    # Validation mid-run and at the end, with the generation-based metrics.
    two = records(run.two)
    dev = [r for r in two if "dev_loss" in r]
    assert [r["step"] for r in dev] == [2, 4], dev
    assert all({"dev_rougeL", "dev_exact_match"} <= set(r) for r in dev)
    assert (run.two / "validation" / "step2.jsonl").is_file()
    from classkd_jax import checkpoint

    assert checkpoint.all_steps(run.two / "checkpoints") == [2, 4]
    assert checkpoint.latest_step(run.two / "best") in (2, 4)
    # Every logged value of the 2-process run is the 1-process run's.
    assert_same_records(records(run.one), two)
    # The method's own host-side machinery ran on both processes.
    steps = [r for r in two if "loss" in r]
    if run.method.removesuffix("+mf") in ("gkd", "minillm", "distillm", "classkd"):
        assert any(r["sampling_share"] > 0 for r in steps), "no step sampled"
    if run.method.endswith("+mf"):  # the term acted, and the classmate trained
        assert any(abs(r.get("misfeedback", 0.0)) > 0 for r in steps), steps
        assert any(r.get("classmate_loss", 0.0) > 0 for r in steps), steps
    if run.method.startswith("distillm"):
        assert steps[-1]["distillm_replay_steps"] >= 1 and steps[-1]["replay_buffer_rows"] > 0
    if run.method == "seqkd":
        assert any((run.two / "seqkd").iterdir())  # the teacher's generated responses
    # The reference runs on another mesh (other reduction orders): after 4 Adam
    # steps, whose update divides by sqrt(v), weights agree to ~3e-5, not 1e-5.
    assert_same_weights(run.one / "student_hf", run.two / "student_hf", atol=1e-4)
    # No program of either run made XLA replicate a sharded tensor in full.
    logs = [run.two / "train.log", run.two / "train.1.log", run.one / "train.log"]
    for text in [run.reference_output, *(p.read_text(errors="replace") for p in logs)]:
        assert REMAT_WARNING not in text, text[text.find(REMAT_WARNING) - 200 :][:1500]
