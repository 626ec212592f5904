"""Runs several JAX processes on 127.0.0.1 for the multi-host tests."""

import socket
import subprocess
import threading
import time

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Started:
    """Every command started at once, each one's output (stdout and stderr) read as it comes."""

    def __init__(self, commands: list[list[str]], env: dict):
        self.procs = [
            subprocess.Popen(
                c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for c in commands
        ]
        self.lines: list[list[str]] = [[] for _ in self.procs]
        self._readers = [
            threading.Thread(target=self._read, args=(i,), daemon=True)
            for i in range(len(self.procs))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, i: int) -> None:
        for line in self.procs[i].stdout:
            self.lines[i].append(line)

    def output(self, i: int) -> str:
        return "".join(self.lines[i])

    def wait_until(self, condition, timeout: float = 300) -> None:
        """Polls `condition()`; fails when a process exits first or `timeout` s pass."""
        deadline = time.time() + timeout
        while not condition():
            for j, p in enumerate(self.procs):
                assert p.poll() is None, f"process {j} exited:\n{self.output(j)[-3000:]}"
            assert time.time() < deadline, f"not within {timeout} s:\n{self.output(0)[-3000:]}"
            time.sleep(0.1)

    def finish(self, timeout: float) -> list[int]:
        """Every exit status; fails (killing all) when one still runs after `timeout` s."""
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                pytest.fail(f"still running {timeout} s later:\n{self.output(0)[-3000:]}")
        for reader in self._readers:
            reader.join(timeout=10)
        return [p.returncode for p in self.procs]


def run_processes(commands: list[list[str]], env: dict, timeout: float) -> list[str]:
    """Starts every command at once and waits for all; returns their logs.

    Fails the test, with the failing process's log tail, when one exits non-zero
    or when they do not all finish within `timeout` seconds (then all are killed).
    """
    started = Started(commands, env)
    statuses = started.finish(timeout)
    logs = [started.output(i) for i in range(len(commands))]
    for i, (status, log) in enumerate(zip(statuses, logs, strict=True)):
        assert status == 0, f"process {i} exited with {status}:\n{log[-3000:]}"
    return logs
