"""Runs the trainer as a real process and kills it with SIGKILL, as a lost machine would.

    attempts = kill_and_rerun(argv, workdir, seed=0, kills=3)

Each attempt is `python -m classkd_jax.train ARGV` in a session of its own;
it is killed (its whole process group, SIGKILL: no handler runs) at a moment
drawn from `random.Random(seed)`: once it has logged a drawn step, after a
drawn delay, or, for one of the kills, the moment a checkpoint save is under
way (Orbax's `*.orbax-checkpoint-tmp*` directory appears). Then the same
command runs again; after `kills` kills, a last attempt runs to its end.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


@dataclasses.dataclass
class Attempt:
    returncode: int
    output: str
    killed: str  # how it was killed ('' for the last attempt)


def _tmp_saves(checkpoints: Path) -> set[tuple[str, int, int]]:
    """Orbax's temporary save directories now: (name, inode, mtime)."""
    try:
        entries = list(checkpoints.iterdir())
    except FileNotFoundError:
        return set()
    out = set()
    for p in entries:
        if "orbax-checkpoint-tmp" in p.name:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.add((p.name, st.st_ino, st.st_mtime_ns))
    return out


def _logged_step(output: str) -> int:
    steps = re.findall(r"^step (\d+)/", output, re.M)
    return int(steps[-1]) if steps else 0


def _attempt(argv, workdir: Path, env: dict, until, timeout: float) -> Attempt:
    proc = subprocess.Popen(
        [sys.executable, "-m", "classkd_jax.train", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    killed = ""
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if until is not None:
                killed = until("".join(lines))
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    return Attempt(proc.returncode, "".join(lines), killed)


def kill_and_rerun(
    argv: list[str],
    workdir: Path,
    *,
    seed: int,
    kills: int = 3,
    total_steps: int,
    save_kill: int = 1,
    timeout: float = 240,
) -> list[Attempt]:
    """`kills` attempts killed at seeded moments (attempt `save_kill` during a save),
    then one run to the end; returns every attempt."""
    rng = random.Random(seed)
    env = {**os.environ}
    attempts = []
    for i in range(kills):
        checkpoints = workdir / "checkpoints"
        if i == save_kill:
            before = _tmp_saves(checkpoints)

            def until(output, before=before, checkpoints=checkpoints):
                fresh = _tmp_saves(checkpoints) - before
                return f"during the save of {sorted(fresh)[0][0]}" if fresh else ""

        else:
            target = rng.randint(1, max(total_steps - 2, 1))
            delay = rng.uniform(0.0, 0.3)
            reached: list[float] = []

            def until(output, target=target, delay=delay, reached=reached):
                if _logged_step(output) < target:
                    return ""
                if not reached:
                    reached.append(time.time())
                if time.time() - reached[0] < delay:
                    return ""
                return f"{delay:.2f} s after step {_logged_step(output)} was logged"

        attempts.append(_attempt(argv, workdir, env, until, timeout))
    attempts.append(_attempt(argv, workdir, env, None, timeout))
    return attempts
