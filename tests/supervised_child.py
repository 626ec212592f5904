"""A stand-in for the trainer under `classkd_jax.supervisor` (no JAX: it starts in
milliseconds): `python -m tests.supervised_child ACTION LOG [PROCESS PROCESSES]`.

ACTION: `report-then-abort-like-jax` (what JAX's C++ runtime does when a peer
is lost), `abort-in-start-up-like-jax` (when not every process reaches the
coordinator in time), `exit-3`, `wait-for-sigterm` (exits 143 on SIGTERM, printing how
many it got), `sleep` (until killed; prints its pid first).
"""

import os
import signal
import sys
import time
from pathlib import Path

from classkd_jax import supervisor

HEARTBEATS_LOST = (
    "E1201 19:00:24.289569   29469 coordination_service.cc:1549] Use error polling to "
    "propagate the following error to all tasks: UNAVAILABLE: The following tasks are "
    "unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed.\n"
    "F1201 19:00:24.290386   29480 client.h:80] Terminating process because the JAX "
    "distributed service detected fatal errors. This most likely indicates that another "
    "task died\n*** Check failure stack trace: ***\n"
)

STARTUP_TIMED_OUT = (
    "F1201 20:01:29.575085   22524 client.h:80] Terminating process because the JAX "
    "distributed service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline "
    "Exceeded\n\nRPC: /xla.coordination.CoordinationService/RegisterTask\n"
)


def main() -> None:
    action, log = sys.argv[1], Path(sys.argv[2])
    process, processes = (int(a) for a in sys.argv[3:5]) if len(sys.argv) > 3 else (0, 2)
    child = supervisor.child_start(log.parent)
    if action == "abort-in-start-up-like-jax":
        os.write(2, STARTUP_TIMED_OUT.encode())
        os.abort()
    supervisor.started(child, process, processes, log)
    print("child started", file=sys.stderr, flush=True)  # to the terminal, not the log
    if action == "report-then-abort-like-jax":
        os.write(2, HEARTBEATS_LOST.encode())  # C++ writes straight to fd 2: the log
        os.abort()
    if action == "exit-3":
        sys.exit(3)
    if action == "wait-for-sigterm":
        got = []
        signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
        print("ready", flush=True)
        deadline = time.time() + 20
        while not got and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a second, duplicate signal would land here
        print(f"sigterms {len(got)}", flush=True)
        sys.exit(143 if got else 1)
    if action == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
