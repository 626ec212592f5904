"""One live run per workdir: the lock refuses a second run, names its holder, and is
taken over when its holder is dead (same host: the pid is gone; another host: no
heartbeat for `STALE_AFTER_S`). The end-to-end cases (a second real run refused,
a SIGKILLed run's lock taken over) are in tests/test_train_cli.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from classkd_jax import cli, train
from classkd_jax.cli import UserError
from classkd_jax.training import workdir_lock


def _plant(workdir, **content) -> None:
    """A lock as another run would have left it."""
    workdir.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "heartbeat": time.time(), "token": "other", **content}  # fmt: skip
    (workdir / workdir_lock.NAME).write_text(json.dumps(holder))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_workdir_refuses_a_second_holder_naming_the_first(tmp_path):
    lock = workdir_lock.acquire(tmp_path / "run")
    held = json.loads((tmp_path / "run" / workdir_lock.NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(UserError, match=rf"in use by a live run \(host .*, pid {os.getpid()}, "):
        workdir_lock.acquire(tmp_path / "run")
    lock.release()
    assert not (tmp_path / "run" / workdir_lock.NAME).exists()
    workdir_lock.acquire(tmp_path / "run").release()  # free again


def test_a_lock_whose_process_is_gone_is_taken_over_with_one_line(tmp_path):
    _plant(tmp_path, pid=_dead_pid())
    said = []
    lock = workdir_lock.acquire(tmp_path, say=said.append)
    assert len(said) == 1 and said[0].startswith("took over the lock of a run that is gone")
    assert json.loads((tmp_path / workdir_lock.NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_lock_is_stale_only_without_a_recent_heartbeat(tmp_path):
    _plant(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(UserError, match="host elsewhere, pid 1"):
        workdir_lock.acquire(tmp_path, stale_after=60)
    old = time.time() - 120
    os.utime(tmp_path / workdir_lock.NAME, (old, old))  # no heartbeat for 2 minutes
    said = []
    workdir_lock.acquire(tmp_path, stale_after=60, say=said.append).release()
    assert "host elsewhere" in said[0]


def test_the_heartbeat_is_refreshed_and_a_taken_over_lock_is_left_alone(tmp_path):
    lock = workdir_lock.acquire(tmp_path, heartbeat_s=0.05)
    path = tmp_path / workdir_lock.NAME
    first = json.loads(path.read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads(path.read_text())["heartbeat"] > first
    _plant(tmp_path, token="newcomer")  # another run took it over (we were deemed dead)
    time.sleep(0.2)
    lock.release()
    assert json.loads(path.read_text())["token"] == "newcomer"  # neither rewritten nor removed


def test_an_unwritable_workdir_is_refused_at_start_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["--config", "configs/sft.py:size=tiny", "--workdir", str(blocker / "run")]
    assert cli.run(train.main, argv, prog=train.PROG) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"{train.PROG}: error: --workdir {blocker / 'run'} is not writable (Not a directory): "
        "give a directory this user can write"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_workdir_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(UserError, match="is not writable \\(Permission denied\\)"):
            workdir_lock.acquire(tmp_path)
    finally:
        tmp_path.chmod(0o755)
