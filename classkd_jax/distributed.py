"""Command-line flags that start JAX's multi-process runtime (`jax.distributed`).

One process per host: on Cloud TPU, Slurm or Open MPI `--distributed` alone is
enough (JAX detects the cluster); elsewhere, or to simulate hosts on one
machine, give the coordinator and this process's place in the job:

  python -m classkd_jax.generate ... --coordinator_address 127.0.0.1:1234 \\
      --num_processes 2 --process_id 0      # and --process_id 1 in a second shell
"""

from __future__ import annotations

import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --distributed, --coordinator_address, --num_processes, --process_id."""
    group = parser.add_argument_group("multi-process (one process per host)")
    group.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize()"
    )
    group.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)


def initialize(args: argparse.Namespace) -> bool:
    """Starts `jax.distributed` when the flags ask for it (before any JAX computation).

    Returns:
      True when it was started.

    Raises:
      ValueError: naming the flags when only some of the explicit ones are given.
    """
    explicit = {
        "coordinator_address": args.coordinator_address,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) != len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(f"--{', --'.join(given)} given without --{', --'.join(missing)}")
    if not (args.distributed or given):
        return False
    import jax

    # CPU processes exchange collectives over gloo (a no-op setting on TPU and GPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
    return True
