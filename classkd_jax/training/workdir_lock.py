"""One live run per workdir: a lock file that names its holder and goes stale when it dies.

    lock = workdir_lock.acquire(workdir, say=print)   # UserError when a live run holds it
    ...                                               # train
    lock.release()                                    # on every way out but SIGKILL

`DIR/workdir.lock` is a small JSON file: host, pid, the process's start time
(to tell a reused pid from the holder), when the lock was taken and its
heartbeat. It is created with `O_CREAT | O_EXCL`, so of two runs starting
together exactly one gets it. A daemon thread rewrites the heartbeat every
`HEARTBEAT_S` seconds (atomically: a temporary file renamed over the lock).

A lock whose holder is dead is taken over, with one line saying so: on the
same host when its pid is gone (or belongs to a younger process), on another
host when its heartbeat is older than `STALE_AFTER_S` seconds (a host cannot
see another's pids). Otherwise the new run is refused, naming the holder and
how to proceed. Several processes of one run share the lock: process 0 takes
it (`classkd_jax.training.run.train`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from classkd_jax.cli import UserError

NAME = "workdir.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # 10 missed heartbeats: a holder on another host is taken for dead


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start  # a reused pid is another process


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(holder: dict) -> str:
    """'host H, pid P, since T' for a lock's content."""
    since = _stamp(holder["started"]) if "started" in holder else "an unknown time"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since}"


def is_stale(holder: dict | None, age: float, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether a lock's holder is dead.

    Args:
      holder: the lock's content (None: unreadable, e.g. caught while being created).
      age: seconds since the lock file was last written (its heartbeat).
      stale_after: how old another host's heartbeat must be to count as dead.
    """
    if holder is None or holder.get("host") != socket.gethostname():
        return age > stale_after
    return not _pid_alive(int(holder["pid"]), holder.get("pid_start"))


class WorkdirLock:
    """A held lock; `release` removes it (only if it is still this run's)."""

    def __init__(self, path: Path, content: dict, heartbeat_s: float):
        self.path = path
        self.content = content
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name="workdir-lock", daemon=True
        )
        self._thread.start()

    def _ours(self) -> bool:
        holder, _ = _read(self.path)
        return holder is not None and holder.get("token") == self.content["token"]

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self._ours():  # taken over (we were deemed dead): leave it be
                return
            self.content["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # a full disk must not end the run here
                _write_replace(self.path, self.content)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._ours():
            with contextlib.suppress(OSError):
                self.path.unlink()


def _read(path: Path) -> tuple[dict | None, float | None]:
    """(content or None when unreadable, seconds since last written or None when gone)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(path.read_text()), age
    except (OSError, ValueError):
        return None, age


def _write_replace(path: Path, content: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content) + "\n")
    os.replace(tmp, path)


def _create(path: Path, content: dict) -> bool:
    """Creates the lock with `content`; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(content) + "\n")
    return True


def unwritable(workdir: Path, error: OSError) -> UserError:
    """The one-line refusal of a workdir this process cannot create or write in."""
    reason = error.strerror or type(error).__name__
    return UserError(
        f"--workdir {workdir} is not writable ({reason}): give a directory this user can write"
    )


def acquire(
    workdir: str | os.PathLike,
    *,
    say: Callable[[str], None] = lambda line: None,
    stale_after: float = STALE_AFTER_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> WorkdirLock:
    """Takes `workdir`'s lock (creating the directory), or raises a one-line `UserError`.

    Args:
      say: where the one line about a taken-over stale lock goes.
      stale_after: seconds without a heartbeat after which another host's holder is dead.
      heartbeat_s: how often the held lock's heartbeat is refreshed.
    """
    workdir = Path(workdir)
    path = workdir / NAME
    now = time.time()
    content = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "started": now,
        "heartbeat": now,
        "token": uuid.uuid4().hex,
    }
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a few tries: another run may take or drop it meanwhile
            if _create(path, content):
                return WorkdirLock(path, content, heartbeat_s)
            holder, age = _read(path)
            if age is None:  # released between our two looks
                continue
            if not is_stale(holder, age, stale_after):
                raise UserError(
                    f"{workdir} is in use by a live run ({describe(holder or {})}): wait for it "
                    f"to end or stop it, then rerun; or use another --workdir"
                )
            if _take_over(path, holder):
                say(f"took over the lock of a run that is gone ({describe(holder or {})})")
    except OSError as e:
        raise unwritable(workdir, e) from None
    raise UserError(f"{workdir}: could not take {path}; several runs are starting on it at once")


def _take_over(path: Path, holder: dict | None) -> bool:
    """Moves a stale lock aside (of several racing takers one wins the rename) and
    deletes it; the caller then creates its own. False when someone else moved it."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved, _ = _read(aside)
    if holder is not None and moved != holder:  # a fresh lock took its place meanwhile: undo
        os.replace(aside, path)
        return False
    aside.unlink()
    return True
