"""Command-line flags that start JAX's multi-process runtime (`jax.distributed`).

One process per host: on Cloud TPU, Slurm or Open MPI `--distributed` alone is
enough (JAX detects the cluster); elsewhere, or to simulate hosts on one
machine, give the coordinator and this process's place in the job:

  python -m classkd_jax.generate ... --coordinator_address 127.0.0.1:1234 \\
      --num_processes 2 --process_id 0      # and --process_id 1 in a second shell

`python -m classkd_jax.train` also starts it by itself when the environment
describes a job of several processes (a multi-host TPU slice, `srun` with
several tasks, `mpirun`), so the same command runs on every host unchanged.
A process that dies (or whose host stops responding) makes the others fail
instead of waiting forever: start-up waits at most `--init_timeout` seconds
for every process, and JAX's coordination service declares a process dead after
`--heartbeat_timeout` seconds without a heartbeat, which ends the others
(from C++; the trainer's `classkd_jax.supervisor` turns that into one line
naming the process).
"""

from __future__ import annotations

import argparse
import contextlib


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --distributed, --coordinator_address, --num_processes, --process_id."""
    group = parser.add_argument_group("multi-process (one process per host)")
    group.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize()"
    )
    group.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)
    group.add_argument(
        "--init_timeout", type=int, default=300, help="seconds to wait for every process at start"
    )
    group.add_argument(
        "--heartbeat_timeout",
        type=int,
        default=100,
        help="seconds without a heartbeat after which a process counts as dead",
    )


def cluster_processes(environ=None) -> int:
    """How many processes the environment says the job has (1 when it says nothing):
    a multi-host Cloud TPU slice (`TPU_WORKER_HOSTNAMES`), Slurm (`SLURM_NTASKS`
    or `SLURM_NPROCS`), Open MPI (`OMPI_COMM_WORLD_SIZE`)."""
    import os

    env = os.environ if environ is None else environ
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    counts = [len(hosts)]
    for key in ("SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE"):
        with contextlib.suppress(ValueError):
            counts.append(int(env.get(key, "1")))
    return max(max(counts), 1)


_EXPLICIT = ("coordinator_address", "num_processes", "process_id")


def requested(args: argparse.Namespace) -> bool:
    """Whether the flags (or, with `auto_detect`, the cluster) ask for several
    processes; nothing is started.

    Raises:
      ValueError: naming the flags when only some of the explicit ones are given.
    """
    given = [k for k in _EXPLICIT if getattr(args, k) is not None]
    if given and len(given) != len(_EXPLICIT):
        missing = sorted(set(_EXPLICIT) - set(given))
        raise ValueError(f"--{', --'.join(given)} given without --{', --'.join(missing)}")
    auto = getattr(args, "auto_detect", False) and cluster_processes() > 1
    return bool(args.distributed or given or auto)


def initialize(args: argparse.Namespace) -> bool:
    """Starts `jax.distributed` when the flags ask for it (before any JAX computation).

    Returns:
      True when it was started.

    Raises:
      ValueError: naming the flags when only some of the explicit ones are given.
    """
    if not requested(args):
        return False
    import jax

    explicit = {k: getattr(args, k) for k in _EXPLICIT}
    # CPU processes exchange collectives over gloo (a no-op setting on TPU and GPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        **{k: v for k, v in explicit.items() if v is not None},
        initialization_timeout=int(getattr(args, "init_timeout", 300)),
        heartbeat_timeout_seconds=int(getattr(args, "heartbeat_timeout", 100)),
    )
    return True


def shutdown() -> None:
    """Leaves `jax.distributed` on purpose when a command has finished (a no-op when it
    never started). Left to interpreter teardown, process 0 can drop the coordination
    service while a peer is still leaving, and that peer, or process 0 itself, aborts
    (exit -6) after a run that succeeded, which a pod launcher reads as a failure to
    retry. Every process calls it at the same point, so its barrier is met."""
    import sys

    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        jax.distributed.shutdown()


def split_flags(argv):
    """(the multi-process flags as a Namespace, the remaining arguments): for CLIs
    whose own parser is not argparse (the trainer's absl config flags)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_flags(parser)
    args, rest = parser.parse_known_args(list(argv))
    args.auto_detect = True
    return args, rest


def agreed(value: int) -> int:
    """Process 0's value of a host-side decision that leads to collectives.

    Which batch a step trains on (dataset rows, fresh samples, a replay) decides
    which programs run; every process must run the same ones in the same order.
    The trainer's decisions are functions of (seed, step) and of state every
    process holds alike, so they agree by construction; taking them through
    this one helper keeps it so when a host's view differs (another data file,
    a float that rounds the other way), at the cost of one tiny broadcast.
    One process: `value`, no collective.
    """
    import jax

    if jax.process_count() == 1:
        return int(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
