"""How a multi-process trainer's end is reported: the parent that watches the child.

The child here is `tests/supervised_child.py` (no JAX, so each test takes well
under a second); the real trainer under a parent is in test_train_cli.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classkd_jax import supervisor
from tests.supervised_child import HEARTBEATS_LOST, STARTUP_TIMED_OUT

ROOT = Path(__file__).resolve().parents[1]
COORDINATOR_GONE = (
    "F1201 19:01:42.203487   29749 client.h:80] Terminating process because the JAX "
    "distributed service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send "
    "RPC to coordination service. Either the leader task was preempted/died/restarted "
    "unexpectedly or this task is experiencing network issues.\n"
)
REPORT = {"process": 0, "processes": 2, "log": "runs/x/train.log"}


def test_a_lost_peer_is_named_with_the_checkpoint_a_rerun_resumes_from():
    message, status = supervisor.explain(signal.SIGABRT, REPORT, HEARTBEATS_LOST, 21)
    assert status == supervisor.EXIT_PEER_LOST == 75
    assert message.startswith("process 0 of 2: process 1 died or stopped responding")
    assert "(its log: runs/x/train.log)" in message
    assert message.endswith("rerunning the job resumes from checkpoint 21")


def test_a_lost_coordinator_is_named_as_process_0():
    message, status = supervisor.explain(signal.SIGABRT, REPORT, COORDINATOR_GONE, None)
    assert status == 75
    assert "process 0 (the coordinator) died or stopped responding" in message
    assert message.endswith("no checkpoint was written yet, so a rerun starts over")


def test_other_deaths_keep_their_signal_in_the_status():
    message, status = supervisor.explain(signal.SIGKILL, None, "", 4)
    assert status == 128 + signal.SIGKILL
    assert message.startswith("this process was killed by SIGKILL (out of memory?)")
    # An abort that is not JAX's distributed runtime is not called a lost peer.
    _, status = supervisor.explain(signal.SIGABRT, REPORT, "some other C++ check failed", 4)
    assert status == 128 + signal.SIGABRT


def test_a_start_up_that_jax_ends_names_the_coordinator_and_the_timeout():
    startup = supervisor.Startup("10.0.0.1:1234", 2, 1, 300)
    message, status = supervisor.explain(
        signal.SIGABRT, None, STARTUP_TIMED_OUT, None, startup, Path("DIR/train.starting.7.log")
    )
    assert status == 75
    assert message == (
        "process 1 of 2: JAX's distributed runtime did not start: not every process reached "
        "10.0.0.1:1234 within --init_timeout 300 s (one did not start, or the address, the "
        "port or --num_processes is wrong) (its log: DIR/train.starting.7.log)"
    )


def test_several_lost_processes_are_all_named():
    log = HEARTBEATS_LOST.replace("):\n1\n", "):\n1, 3\n")
    assert supervisor.lost_process(log) == "processes 1, 3"
    assert supervisor.lost_process("no reason given") == "another process"


def _supervise(action: str, tmp_path: Path, capfd, **kwargs) -> tuple[int, str, str]:
    log = tmp_path / "train.log"
    status = supervisor.supervise(
        [action, str(log)], prog="prog", workdir=tmp_path, module="tests.supervised_child",
        **kwargs,
    )  # fmt: skip
    return status, capfd.readouterr().err, log.read_text() if log.exists() else ""


def test_a_child_ended_by_jax_is_one_line_and_its_cpp_output_stays_in_its_log(tmp_path, capfd):
    status, err, log = _supervise("report-then-abort-like-jax", tmp_path, capfd)
    assert status == 75
    lines = err.strip().splitlines()
    assert lines == [
        "child started",
        f"prog: error: process 0 of 2: process 1 died or stopped responding, so JAX's "
        f"distributed runtime ended this one (its log: {tmp_path / 'train.log'}); "
        "no checkpoint was written yet, so a rerun starts over",
    ]
    assert "Terminating process" in log and "stack trace" in log
    assert not list(tmp_path.glob("train.starting.*"))  # moved into the log once up


def test_a_start_up_that_jax_ends_is_one_line_and_keeps_its_log(tmp_path, capfd):
    startup = supervisor.Startup("127.0.0.1:1234", 2, 0, 5)
    status, err, _ = _supervise("abort-in-start-up-like-jax", tmp_path, capfd, startup=startup)
    (early,) = tmp_path.glob("train.starting.*.log")
    assert status == 75
    assert err.strip().splitlines() == [
        "prog: error: process 0 of 2: JAX's distributed runtime did not start: not every "
        "process reached 127.0.0.1:1234 within --init_timeout 5 s (one did not start, or the "
        f"address, the port or --num_processes is wrong) (its log: {early})"
    ]
    assert "RegisterTask" in early.read_text()


def test_a_childs_own_exit_status_passes_through(tmp_path, capfd):
    status, err, _ = _supervise("exit-3", tmp_path, capfd)
    assert status == 3 and "error" not in err


def _parent(action: str, tmp_path: Path) -> subprocess.Popen:
    code = (
        "import sys; from pathlib import Path; from classkd_jax import supervisor; "
        f"sys.exit(supervisor.supervise([{action!r}, {str(tmp_path / 'log')!r}], prog='p', "
        f"workdir=Path({str(tmp_path)!r}), module='tests.supervised_child'))"
    )
    env = {k: v for k, v in os.environ.items() if k != supervisor.ENV}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def _wait_for_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, "the child printed nothing"
    return line.strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_to_the_parent_reaches_the_child_once_as_sigterm(tmp_path, signum):
    parent = _parent("wait-for-sigterm", tmp_path)
    assert _wait_for_line(parent) == "ready"  # the child's handler is in place
    parent.send_signal(signum)
    out, _ = parent.communicate(timeout=30)
    assert parent.returncode == 143
    assert out.strip() == "sigterms 1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_its_parent(tmp_path):
    parent = _parent("sleep", tmp_path)
    child = int(_wait_for_line(parent))
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline:
        if not _alive(child):
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its parent")


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
