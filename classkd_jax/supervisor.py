"""A multi-process trainer runs in a child process, so that however it ends, its end is reported.

    status = supervisor.supervise(argv, prog=PROG, workdir=workdir)   # the parent
    fd = supervisor.child_fd()                                         # the child
    supervisor.started(fd, process, processes, log)

Why a parent: JAX's distributed runtime ends a process from C++ (SIGABRT, a
C++ stack trace, no Python) when its coordination service declares another
process dead (no heartbeat for `--heartbeat_timeout` seconds) or when process
0, which hosts the service, is gone. Python cannot catch that. So `python -m
classkd_jax.train` on several processes starts itself again as a child and
waits; when the child is ended that way, the parent prints one line naming
the process that was lost and the checkpoint a rerun resumes from, and exits
75 (EX_TEMPFAIL: rerun the job). Every other ending is the child's own: its
status passes through unchanged.

The child sends the parent where it stands (process index, count, log) over a
pipe once `jax.distributed` is up, and from then on its C++ output (XLA, the
coordination service) goes to its log, `DIR/train.log` or `DIR/train.<i>.log`;
the terminal keeps the trainer's own lines. SIGTERM and SIGINT to the parent
reach the child as SIGTERM (which JAX turns into a preemption notice every
process agrees on; the trainer stops them all after the same step). The child
dies with the parent (`PR_SET_PDEATHSIG` on Linux), so killing the parent is
killing the process. `CLASSKD_JAX_SUPERVISED=0` runs the trainer without a
parent (e.g. under a debugger).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ENV = "CLASSKD_JAX_SUPERVISED"
EXIT_PEER_LOST = 75  # EX_TEMPFAIL: rerun the job; it resumes from the last checkpoint


def wanted() -> bool:
    """Whether this process should start a supervised child (it is not one itself)."""
    return ENV not in os.environ


def child_fd() -> int | None:
    """In a supervised child: the pipe to the parent (None elsewhere). Also ties
    the child's life to the parent's."""
    fd, _, parent = os.environ.get(ENV, "").partition(",")
    if not (fd.isdigit() and parent.isdigit()):
        return None
    _die_with_parent(int(parent))
    return int(fd)


def started(fd: int | None, process: int, processes: int, log: Path) -> None:
    """Tells the parent where this child stands and sends the output of C++ code
    (file descriptors 1 and 2: XLA, the coordination service, gloo) to `log`;
    Python's `sys.stdout` and `sys.stderr` stay on the terminal."""
    if fd is None:
        return
    with os.fdopen(fd, "w") as pipe:
        pipe.write(json.dumps({"process": process, "processes": processes, "log": str(log)}))
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for name, number in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        stream.flush()
        terminal = os.dup(number)
        os.dup2(target, number)
        setattr(sys, name, open(terminal, "w", buffering=1, encoding="utf-8", errors="replace"))  # noqa: SIM115
    os.close(target)


def supervise(argv: list[str], *, prog: str, workdir: Path, module: str) -> int:
    """Runs `python -m module argv` as a supervised child; returns the exit status to use."""
    read, write = os.pipe()
    env = {**os.environ, ENV: f"{write},{os.getpid()}"}
    command = [sys.executable, "-m", module, *argv]
    child = subprocess.Popen(command, env=env, pass_fds=(write,))
    os.close(write)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        returncode = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    report = json.loads(text) if text else None
    if returncode >= 0:
        return returncode
    log = Path(report["log"]) if report else None
    tail = _tail(log) if log else ""
    from classkd_jax import checkpoint

    step = checkpoint.latest_step(Path(workdir) / "checkpoints")
    message, status = explain(-returncode, report, tail, step)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status


def explain(signum: int, report: dict | None, log_tail: str, step: int | None) -> tuple[str, int]:
    """(the one-line message, the exit status) for a child ended by signal `signum`.

    Args:
      report: what the child sent once `jax.distributed` was up (None: it died before).
      log_tail: the end of the child's log (where JAX's C++ runtime wrote why).
      step: the latest checkpoint in the workdir, None when there is none.
    """
    who = f"process {report['process']} of {report['processes']}" if report else "this process"
    where = f" (its log: {report['log']})" if report else ""
    resume = resume_hint(step)
    if signum == signal.SIGABRT and "distributed service detected fatal errors" in log_tail:
        lost = lost_process(log_tail)
        message = f"{who}: {lost} died or stopped responding, so JAX's distributed runtime"
        return f"{message} ended this one{where}; {resume}", EXIT_PEER_LOST
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (out of memory?)" if signum == signal.SIGKILL else ""
    return f"{who} was killed by {name}{hint}{where}; {resume}", 128 + signum


def resume_hint(step: int | None) -> str:
    """What rerunning the job does, given the latest checkpoint (None: none yet)."""
    if step is None:
        return "no checkpoint was written yet, so a rerun starts over"
    return f"rerunning the job resumes from checkpoint {step}"


def lost_process(log_tail: str) -> str:
    """Which process JAX's coordination service gave up on, as its log says."""
    if "leader task was preempted/died" in log_tail:
        return "process 0 (the coordinator)"
    found = re.search(r"unhealthy \(stopped sending heartbeats\):\s*([\d\s,]+)", log_tail)
    if found:
        ids = re.findall(r"\d+", found.group(1))
        return ("process " if len(ids) == 1 else "processes ") + ", ".join(ids)
    return "another process"


def _tail(log: Path, size: int = 64 * 1024) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _die_with_parent(parent: int) -> None:
    """The kernel sends this process SIGKILL when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent was already gone before the call
            os._exit(128 + signal.SIGKILL)
