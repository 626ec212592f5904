"""Pod runs that finish (2 of 2): MiniLLM, DistiLLM with the misfeedback term
(`distillm+mf`: DistiLLM's own machinery, sampling and replay, plus the
classmate and its term) and ClassKD on 2 processes x 4 CPU devices as in
tests/test_pod_runs_a.py, and checkpoints that restore on any
topology: a checkpoint written by 2 processes, or by 1 process on 8 devices,
exports, generates and evaluates on 1 device (the reading side builds its
target from its own devices, never from the topology the checkpoint was
written on).
"""

import json
import subprocess
import sys

import pytest

from tests.pod import ROOT, assert_same_weights, check_pod_run, exported, pod_run

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def classkd_run(tmp_path_factory):
    return pod_run("classkd", tmp_path_factory.mktemp("pod"))


@pytest.mark.parametrize("method", ["minillm", "distillm+mf"])
def test_method_runs_to_completion_on_two_processes_as_on_one(method, tmp_path):
    check_pod_run(pod_run(method, tmp_path))


def test_classkd_runs_to_completion_on_two_processes_as_on_one(classkd_run):
    check_pod_run(classkd_run)


def _one_device(module: str, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    cmd = [sys.executable, "-m", f"classkd_jax.{module}", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("written_by", ["two_processes", "eight_devices"])
def test_a_checkpoint_exports_generates_and_evaluates_on_one_device(
    classkd_run, written_by, tmp_path
):
    workdir = classkd_run.two if written_by == "two_processes" else classkd_run.one
    for role in ("student", "classmate"):
        out = tmp_path / f"{role}_hf"
        done = _one_device("export", "--workdir", str(workdir), "--out", str(out),
                           "--which", "latest", "--role", role)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Topology" not in done.stderr
    # The final checkpoint's student is the one the run exported.
    assert_same_weights(tmp_path / "student_hf", workdir / "student_hf")
    assert set(exported(tmp_path / "classmate_hf")) == set(exported(tmp_path / "student_hf"))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Reverse the words: red green blue"}) + "\n")
    gen = tmp_path / "gen.jsonl"
    args = ["--prompts", str(prompts), "--out", str(gen), "--greedy", "--max_new_tokens", "6"]
    done = _one_device("generate", "--model", str(workdir / "checkpoints"), *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert isinstance(json.loads(gen.read_text())["completion"], str)

    data = tmp_path / "data" / "dolly"
    data.mkdir(parents=True)
    rows = [{"instruction": f"Reverse the words: a b {w}", "input": "", "output": f"{w} b a"}
            for w in ("red", "green", "blue")]  # fmt: skip
    (data / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "eval"
    done = _one_device("evaluate", "--model", str(workdir / "best"), "--data_dir",
                       str(tmp_path / "data"), "--benchmarks", "dolly", "--seeds", "10",
                       "--greedy", "--max_new_tokens", "6", "--max_prompt_length", "32",
                       "--template", "compact", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert "dolly" in table.lower() and "Traceback" not in done.stderr
