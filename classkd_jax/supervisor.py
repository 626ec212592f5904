"""A multi-process trainer runs in a child process, so that however it ends, its end is reported.

    status = supervisor.supervise(argv, prog=PROG, workdir=workdir, module=...)  # parent
    child = supervisor.child_start(workdir)                 # the child, before jax.distributed
    supervisor.started(child, process, processes, log)     # ... and once it is up

Why a parent: JAX's distributed runtime ends a process from C++ (SIGABRT, a
C++ stack trace, no Python) when its coordination service declares another
process dead (no heartbeat for `--heartbeat_timeout` seconds) or when process
0, which hosts the service, is gone. Python cannot catch that. So `python -m
classkd_jax.train` on several processes starts itself again as a child and
waits; when the child is ended that way, the parent prints one line naming
the process that was lost and the checkpoint a rerun resumes from, and exits
75 (EX_TEMPFAIL: rerun the job). Every other ending is the child's own: its
status passes through unchanged.

The same goes for a start-up that JAX ends (not every process reached the
coordinator within `--init_timeout`): one line, exit 75. The child's C++
output (XLA, the coordination service, gloo) goes to `DIR/train.starting.<pid>.log`
until `jax.distributed` is up, then the child sends the parent where it
stands (process index, count, log) over a pipe and the output moves to its
log, `DIR/train.log` or `DIR/train.<i>.log`; the terminal keeps the
trainer's own lines. SIGTERM and SIGINT to the parent
reach the child as SIGTERM (which JAX turns into a preemption notice every
process agrees on; the trainer stops them all after the same step). The child
dies with the parent (`PR_SET_PDEATHSIG` on Linux), so killing the parent is
killing the process. `CLASSKD_JAX_SUPERVISED=0` runs the trainer without a
parent (e.g. under a debugger).
"""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclasses.dataclass
class Child:
    """A supervised child's side: the pipe to the parent, its start-up log."""

    pipe: int
    startup_log: Path


@dataclasses.dataclass(frozen=True)
class Startup:
    """What `jax.distributed`'s start-up was asked for (None: left to detection)."""

    coordinator: str | None
    processes: int | None
    process: int | None
    timeout: int


def startup_log(workdir: Path, pid: int, name: str = "train") -> Path:
    """Where a child's C++ output goes until it knows its process index."""
    return Path(workdir) / f"{name}.starting.{pid}.log"


def process_log(logdir: Path, process: int, name: str = "train") -> Path:
    """One log per process: NAME.log (process 0), NAME.<i>.log (the others)."""
    return Path(logdir) / (f"{name}.log" if process == 0 else f"{name}.{process}.log")


def child_start(workdir: Path, name: str = "train") -> Child | None:
    """In a supervised child (None elsewhere): ties its life to the parent's and
    sends the output of C++ code (file descriptors 1 and 2: XLA, the coordination
    service, gloo) to its start-up log; Python's `sys.stdout` and `sys.stderr`
    stay on the terminal."""
    fd, _, parent = os.environ.get(ENV, "").partition(",")
    if not (fd.isdigit() and parent.isdigit()):
        return None
    _die_with_parent(int(parent))
    child = Child(int(fd), startup_log(workdir, os.getpid(), name))
    child.startup_log.parent.mkdir(parents=True, exist_ok=True)
    for name, number in (("stdout", 1), ("stderr", 2)):
        getattr(sys, name).flush()
        terminal = os.dup(number)
        setattr(sys, name, open(terminal, "w", buffering=1, encoding="utf-8", errors="replace"))  # noqa: SIM115
    _point_at(child.startup_log)
    return child


def started(child: Child | None, process: int, processes: int, log: Path) -> None:
    """Once `jax.distributed` is up: tells the parent where this child stands and
    moves its C++ output (and what start-up wrote) to `log`."""
    if child is None:
        return
    with os.fdopen(child.pipe, "w") as pipe:
        pipe.write(json.dumps({"process": process, "processes": processes, "log": str(log)}))
    _point_at(log)  # in the workdir, which child_start made
    with contextlib.suppress(OSError):
        with open(log, "ab") as out:
            out.write(child.startup_log.read_bytes())
        child.startup_log.unlink()


def _point_at(path: Path) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)


def supervise(
    argv: list[str],
    *,
    prog: str,
    workdir: Path,
    module: str,
    startup: Startup | None = None,
    name: str = "train",
    rerun: str | None = None,
) -> int:
    """Runs `python -m module argv` as a supervised child; returns the exit status to use.

    Args:
      workdir: where the child's logs go (a trainer's checkpoints are under it).
      startup: what the child's start-up needs (for the message when it fails there).
      name: the logs' stem (`NAME.log`, `NAME.<i>.log`, `NAME.starting.<pid>.log`).
      rerun: what rerunning does, for a command without checkpoints (None: the
        trainer's hint from the latest checkpoint under `workdir`).
    """
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
    try:
        report = json.loads(text) if text else None
    except json.JSONDecodeError:  # the child died while writing it
        report = None
    early = startup_log(workdir, child.pid, name)
    if returncode >= 0:
        with contextlib.suppress(OSError):
            if early.stat().st_size == 0:
                early.unlink()
        return returncode
    log = Path(report["log"]) if report else early
    step = None
    if rerun is None:
        from classkd_jax import checkpoint

        step = checkpoint.latest_step(Path(workdir) / "checkpoints")
    message, status = explain(-returncode, report, _tail(log), step, startup, log, rerun)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status


def explain(
    signum: int,
    report: dict | None,
    log_tail: str,
    step: int | None,
    startup: Startup | None = None,
    log: Path | None = None,
    rerun: str | None = None,
) -> tuple[str, int]:
    """(the one-line message, the exit status) for a child ended by signal `signum`.

    Args:
      report: what the child sent once `jax.distributed` was up (None: it died before).
      log_tail: the end of the child's log (where JAX's C++ runtime wrote why).
      step: the latest checkpoint in the workdir, None when there is none.
      startup: the start-up flags, named when the child died before it was up.
      log: the child's log (its start-up log when it died before it was up).
      rerun: what rerunning does, instead of the trainer's checkpoint hint.
    """
    if report:
        who = f"process {report['process']} of {report['processes']}"
    elif startup and startup.process is not None and startup.processes:
        who = f"process {startup.process} of {startup.processes}"
    else:
        who = "this process"
    log = log or (report["log"] if report else None)
    where = f" (its log: {log})" if log else ""
    resume = rerun or resume_hint(step)
    jax_ended = signum == signal.SIGABRT and "distributed service detected fatal errors" in log_tail
    if jax_ended and report is None:
        coordinator = startup.coordinator if startup and startup.coordinator else "the coordinator"
        timeout = f" within --init_timeout {startup.timeout} s" if startup else ""
        return (
            f"{who}: JAX's distributed runtime did not start: not every process reached "
            f"{coordinator}{timeout} (one did not start, or the address, the port or "
            f"--num_processes is wrong){where}",
            EXIT_PEER_LOST,
        )
    if jax_ended:
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


def run_command(argv, multi, *, prog: str, module: str, logdir: Path, name: str, rerun: str):
    """A CLI other than the trainer (generate, evaluate) on several processes.

    In the parent (several processes asked for, not yet a child): supervises
    `python -m module argv` and returns its exit status. Otherwise starts
    `jax.distributed` when `multi` asks for it (a child moves its C++ output to
    `logdir/NAME.log` / `NAME.<i>.log` once up) and returns None: run the command.
    """
    from classkd_jax import distributed

    several = distributed.requested(multi)
    if several and wanted():
        logdir.mkdir(parents=True, exist_ok=True)
        startup = Startup(
            multi.coordinator_address,
            multi.num_processes,
            multi.process_id,
            int(getattr(multi, "init_timeout", 300)),
        )
        return supervise(
            list(argv), prog=prog, workdir=logdir, module=module, startup=startup,
            name=name, rerun=rerun,
        )  # fmt: skip
    child = None
    if several:
        logdir.mkdir(parents=True, exist_ok=True)
        child = child_start(logdir, name)
    distributed.initialize(multi)
    if child is not None:
        import jax

        index = jax.process_index()
        started(child, index, jax.process_count(), process_log(logdir, index, name))
    return None


def collective_failed(error: Exception, *, prog: str, logdir: Path, name: str, rerun: str):
    """A collective with the other processes failed in a CLI other than the trainer:
    one line, then exit 75 at once (Python's normal exit would wait in
    `jax.distributed`'s shutdown barrier for the process that is gone)."""
    import jax

    from classkd_jax import cli

    cli._record_traceback(error)
    index = jax.process_index()
    first = " ".join(str(error).split())[:100]  # the whole error is in the log
    print(
        f"{prog}: error: process {index} of {jax.process_count()}: a collective with the "
        f"other processes failed ({first}); another process died or stopped responding "
        f"(this one's log: {process_log(logdir, index, name)}); {rerun}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_PEER_LOST)
