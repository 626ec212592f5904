r"""Trace (lower) every program of every method x pair config for a TPU slice: no trace-time
failure waits for a pod.

    python benchmarks/bench_lower.py [--topology v5e:4x4] [--methods all] [--pairs all] \
        [--programs largest|all]

Lowering is the step before compiling: the configs' shapes are traced through
the trainer's own programs (`classkd_jax.training.programs`) with the
topology's shardings, which is where shape, vocabulary and sharding mistakes
surface (e.g. a teacher-mixed sampler of two heads padded differently). It
takes seconds a program where compiling takes minutes. Prints one line per
(method, pair): the programs lowered and the time, or the first error; exit
status 1 when any failed. Needs the `compile` extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("sft", "kd", "seqkd", "gkd", "minillm", "distillm", "classkd")


def lower_all(method: str, pair: str, topology_name: str, which: str) -> tuple[int, float]:
    """(programs lowered, seconds) for `configs/{method}.py:pair={pair}`."""
    from classkd_jax import topology
    from classkd_jax.train import parse_flags
    from classkd_jax.training import checks, programs, run

    config, _ = parse_flags(["--config", f"configs/{method}.py:pair={pair}"], workdir=False)
    checks.validate(config)
    topo = topology.get(topology_name)
    mesh = run.make_mesh(config, devices=topo.devices)
    run.check_batch_sizes(config, mesh, processes=topo.processes)
    start = time.perf_counter()
    plan = programs.plan(config, mesh)
    chosen = plan.programs if which == "all" else programs.largest(plan.programs)
    for program in chosen:
        program.lower()
    return len(chosen), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e:4x4")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--pairs", default="all")
    parser.add_argument("--programs", default="largest", choices=("largest", "all"))
    args = parser.parse_args()
    from classkd_jax import topology
    from classkd_jax.config_utils import import_sibling
    from classkd_jax.training import logs

    topology.quiet()
    logs.quiet_libraries()
    pairs = list(import_sibling(str(ROOT / "configs" / "x.py"), "_base").PAIRS)
    pairs = pairs if args.pairs == "all" else args.pairs.split(",")
    methods = METHODS if args.methods == "all" else tuple(args.methods.split(","))
    failed = 0
    for pair in pairs:
        for method in methods:
            try:
                n, seconds = lower_all(method, pair, args.topology, args.programs)
                print(f"{method:9s} {pair:28s} lowered {n} programs in {seconds:.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure, then go on
                failed += 1
                line = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                print(f"{method:9s} {pair:28s} FAILED {line}", flush=True)
    print(f"{failed} of {len(pairs) * len(methods)} failed on {args.topology}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
