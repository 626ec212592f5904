"""Runs several JAX processes on 127.0.0.1 for the multi-host tests."""

import socket
import subprocess

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], env: dict, timeout: float) -> list[str]:
    """Starts every command at once and waits for all; returns their logs.

    Fails the test, with the failing process's log tail, when one exits non-zero
    or when they do not all finish within `timeout` seconds (then all are killed).
    """
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{len(procs)} processes did not finish within {timeout} s")
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{log[-3000:]}"
    return logs
