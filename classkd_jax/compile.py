r"""Compile every program of a run for a TPU slice or a GPU node, from this CPU host.

    python -m classkd_jax.compile --config configs/<method>.py[:variant] --topology TOPOLOGY \
        [--config.key=value ...] [--out FILE.json] [--programs largest|all|largest-step|samplers] \
        [--jobs N]

TOPOLOGY is a TPU slice in libtpu's names (`v5e:2x2`, `v5e:4x4`, `v5p:2x2x2`,
`v6e:4x4`, `v4:2x2x1`, ...) or a GPU node `a100:8`, `h100:8`, `h200:8`
(`h100:2x8`: two nodes). The config and its overrides are the trainer's
(same parser, same checks); `mesh.*` resolves against the topology's
devices and the batch checks use its hosts. No weight is loaded and nothing
reaches the network: shapes come from the presets (roles named by a hub id)
or a local model directory's config.json (`classkd_jax.training.programs`
lists the programs). A teacher with another tokenizer (`teacher.tokenizer`)
needs that tokenizer here (a directory, or a hub name already in the Hugging
Face cache): its train steps, one per pair of (student, teacher) row
buckets, hold the teacher's own rows and the alignment arrays.

Prints one row per program: per-device arguments / outputs / aliased (donated)
/ temporaries / total GiB (arguments + outputs - aliased + temporaries),
the device's memory, the headroom, the compile time and the program's
FLOPs (`training/flops.py`, whole batch); then what each program costs
(`costs.py`: per-device FLOPs, HBM bytes and collective bytes of one call,
as the compiled program states them, and a lower bound of its time from the
chip's datasheet peaks, with the train step's MFU and a sampler's ms per
generated token at that bound: estimates, not measurements); then the FLOPs
of one training step and a verdict. Exit status 0 when every program fits,
3 when one does not (a compile XLA refuses for lack of memory counts as not
fitting), with one line naming the largest program, by how much it is over,
and what to try. `--out` writes the same as JSON.

By default (`--programs largest`) only the largest bucket of each family of
programs is compiled: a smaller bucket of the same program never needs more
memory, so these decide the verdict. `--programs all` compiles every
program the run would; `largest-step` only the train step with the largest
buckets (the largest program of every pair measured); `samplers` the largest
bucket of each program with a decode loop (on-policy, teacher-mixed, SeqKD,
validation's greedy): what decoding costs. Programs compile in
`--jobs` worker processes at once (default: one per CPU core, at most one
per 5 GiB of available host memory: a large compile peaks at 3-5 GB).
Needs the `compile` extra (libtpu and the CUDA plugin; no GPU or driver
needed): `pip install -e '.[compile]'`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

PROG = "python -m classkd_jax.compile"
EXIT_DOES_NOT_FIT = 3
GIB = 1024**3
HOST_GIB_PER_JOB = 5  # host memory a large compile can peak at
PROGRAMS = ("largest", "all", "largest-step", "samplers")
SAMPLING_KINDS = ("sampler", "greedy", "seqkd")  # programs with a decode loop


def parse_args(argv: Sequence[str]):
    """(config, topology name, out path | None, programs, jobs | None); every
    mistake is a `UserError`."""
    from classkd_jax.cli import UserError
    from classkd_jax.train import parse_flags

    parser = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("--topology")
    parser.add_argument("--out")
    parser.add_argument("--programs", default="largest")
    parser.add_argument("--jobs")
    args, rest = parser.parse_known_args(list(argv))
    if not args.topology:
        raise UserError("--topology is required, e.g. --topology v5e:4x4 or --topology h100:8")
    if args.programs not in PROGRAMS:
        raise UserError(f"--programs {args.programs}: expected one of {', '.join(PROGRAMS)}")
    jobs = None
    if args.jobs is not None:
        if not args.jobs.isdigit() or int(args.jobs) < 1:
            raise UserError(f"--jobs {args.jobs}: expected a whole number of processes, 1 or more")
        jobs = int(args.jobs)
    config, _ = parse_flags(rest, workdir=False)
    return config, args.topology, args.out, args.programs, jobs


def _is_oom(error: Exception) -> bool:
    text = str(error).lower()
    return (
        "resource_exhausted" in text
        or "out of memory" in text
        or "exceeds" in text
        and "memory" in text
    )


def compile_program(program, memory: int, donated: int = 0, devices: int = 1, chip=None) -> dict:
    """One program's row: compiled, its memory analysis and costs (`costs.py`;
    `chip` the device's peaks, None for none), or XLA's refusal for memory."""
    from classkd_jax import costs

    start = time.perf_counter()
    lowered = program.lower()
    row = {"program": program.name, "kind": program.kind, "flops": program.flops}
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises JaxRuntimeError / XlaRuntimeError
        if not _is_oom(e):
            raise
        first = " ".join(str(e).split())[:300]
        row.update(status="out of memory", error=first, compile_s=time.perf_counter() - start)
        return row
    m = compiled.memory_analysis()
    args, out = m.argument_size_in_bytes, m.output_size_in_bytes
    alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
    total = args + out - alias + temp
    row.update(
        status="fits" if total <= memory else "does not fit",
        arguments=args,
        outputs=out,
        aliased=alias,
        temporaries=temp,
        total=total,
        donated=donated if program.donates else 0,
        headroom=memory - total,
        compile_s=time.perf_counter() - start,
    )
    row.update(
        costs.program_costs(program, compiled.as_text(), devices, chip, compiled.cost_analysis())
    )
    return row


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def table(rows: list[dict], memory: int) -> str:
    head = (
        "program",
        "args",
        "outs",
        "alias",
        "temp",
        "total",
        "HBM",
        "headroom",
        "compile",
        "TFLOP",
    )
    lines = []
    for r in rows:
        lines.append(
            (
                r["program"],
                _gib(r.get("arguments")),
                _gib(r.get("outputs")),
                _gib(r.get("aliased")),
                _gib(r.get("temporaries")),
                _gib(r.get("total")) if "total" in r else "OOM",
                _gib(memory),
                _gib(r.get("headroom")),
                f"{r['compile_s']:.1f}s",
                f"{r['flops'] / 1e12:.2f}",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = lambda cells: "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(head) + "   (GiB per device)", *map(fmt, lines)])


def _hints(config, mesh) -> str:
    """What to try, from what the config does not do yet."""
    from classkd_jax.training import objectives

    roles = ["student", "classmate"] if objectives.has_classmate(config) else ["student"]
    hints = [f"--config.{r}.remat=full" for r in roles if config[r].remat != "full"]
    hints.append(f"a larger --config.mesh.fsdp (now {mesh.shape['fsdp']})")
    rows = int(config.data.batch_size)
    hints.append(
        f"a smaller --config.data.batch_size (now {rows}) with --config.grad_accum "
        f"(now {int(config.grad_accum)}), or a larger slice"
    )
    return "try " + ", ".join(hints)


def verdict(rows: list[dict], memory: int, topo_name: str, hints: str = "") -> tuple[int, str]:
    """(exit status, the verdict line)."""
    bad = [r for r in rows if r["status"] != "fits"]
    if not bad:
        worst = max(rows, key=lambda r: r["total"])
        return 0, (
            f"fits: every program fits {topo_name}; the largest, {worst['program']}, needs "
            f"{_gib(worst['total'])} of {_gib(memory)} GiB per device"
        )
    oom = [r for r in bad if "total" not in r]
    if oom:
        r = oom[0]
        over = "XLA refused it: its temporaries alone exceed the device's memory"
    else:
        r = max(bad, key=lambda r: r["total"])
        over = f"needs {_gib(r['total'])} of {_gib(memory)} GiB, {_gib(r['total'] - memory)} over"
    return EXIT_DOES_NOT_FIT, (
        f"does not fit {topo_name}: {len(bad)} of {len(rows)} programs; the largest, "
        f"{r['program']}, {over}; {hints}"
    )


@contextlib.contextmanager
def no_persistent_cache() -> Iterator[None]:
    """JAX's persistent compilation cache off while compiling for the topology: a
    compile-only executable cannot be loaded back from it (the read warns, then
    compiles again), and it has no business in a cache of runnable programs.
    The cache is re-initialised from the config afterwards (in-process callers)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        compilation_cache.reset_cache()


def _setup(argv: Sequence[str]):
    """(config, topology name, out, programs, jobs, topology, mesh, plan, chosen):
    what the command and each worker process build from the same arguments."""
    from classkd_jax import topology
    from classkd_jax.training import checks, programs, run

    config, topo_name, out, which, jobs = parse_args(argv)
    checks.validate(config)
    topo = topology.get(topo_name)
    mesh = run.make_mesh(config, devices=topo.devices)
    run.check_batch_sizes(config, mesh, processes=topo.processes)
    plan = programs.plan(config, mesh)
    chosen = plan.programs if which == "all" else programs.largest(plan.programs)
    if which == "largest-step":  # the step with the largest buckets and most batches
        steps = [p for p in chosen if p.kind == "step"]
        chosen = (max(steps, key=lambda p: (p.name.count("="), p.name)),) if steps else chosen
    if which == "samplers":  # what decoding costs: the largest bucket of each sampler
        chosen = tuple(p for p in chosen if p.kind in SAMPLING_KINDS)
    return config, topo_name, out, which, jobs, topo, mesh, plan, chosen


def default_jobs(programs: int) -> int:
    """Worker processes: one per CPU core this process may use, at most one per
    `HOST_GIB_PER_JOB` of available host memory, at most one per program."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available = None
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as f:
        line = next(x for x in f if x.startswith("MemAvailable:"))
        available = int(line.split()[1]) * 1024
    by_memory = (available // (HOST_GIB_PER_JOB * GIB)) if available else cores
    return max(1, min(cores or 1, by_memory, programs))


_WORKER: dict = {}


def _worker_start(argv: list[str]) -> None:
    """In each worker process: quiet the plugins, build the same plan, no cache."""
    from classkd_jax import topology
    from classkd_jax.training import logs

    topology.quiet()
    logs.quiet_libraries()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    _, _, _, _, _, topo, _, _, chosen = _setup(argv)
    _WORKER.update(topo=topo, programs={p.name: p for p in chosen})


def _worker_compile(name: str, donated: int, chip) -> dict:
    topo = _WORKER["topo"]
    program = _WORKER["programs"][name]
    return compile_program(program, topo.memory_bytes, donated, len(topo.devices), chip)


def compile_all(argv, chosen, topo, donated: int, chip, jobs: int) -> list[dict]:
    """The rows of `chosen`, in its order; with `jobs` > 1 compiled in that many
    worker processes (started fresh: `spawn`), the longest compiles first."""
    devices = len(topo.devices)
    if jobs <= 1 or len(chosen) <= 1:
        return [compile_program(p, topo.memory_bytes, donated, devices, chip) for p in chosen]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from classkd_jax.cli import UserError

    # samplers first (their layers are unrolled: the longest compiles, 2-3x a train
    # step's on TPU), then by FLOPs: the long compiles do not end up last
    order = sorted(chosen, key=lambda p: (p.steps == 0, -p.flops))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, context, _worker_start, (list(argv),)) as pool:
        futures = {p.name: pool.submit(_worker_compile, p.name, donated, chip) for p in order}
        try:
            return [futures[p.name].result() for p in chosen]
        except BrokenProcessPool:
            raise UserError(
                f"a compile worker process died (out of host memory?); rerun with --jobs "
                f"{max(1, jobs - 1)}"
            ) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from classkd_jax import costs, topology
    from classkd_jax.training import logs

    topology.quiet()
    logs.quiet_libraries()  # before transformers is imported: no advisory lines
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network
    config, topo_name, out, _, jobs, topo, mesh, plan, chosen = _setup(argv)
    from classkd_jax.training import programs

    jobs = jobs or default_jobs(len(chosen))
    chip = costs.peak(topo.device_kind)
    print(
        f"{config.method} on {topo_name}: {len(topo.devices)} x {topo.device_kind} "
        f"({topo.processes} host(s)), mesh {dict(mesh.shape)}, {len(chosen)} of "
        f"{len(plan.programs)} programs, {min(jobs, len(chosen))} at a time",
        file=sys.stderr,
    )
    with no_persistent_cache():
        donated = programs.state_bytes(plan.state) if plan.state is not None else 0
        rows = compile_all(argv, chosen, topo, donated, chip, jobs)
    print(table(rows, topo.memory_bytes))
    print(costs.table(rows, chip))
    print(costs.footnote(chip))
    steps = [r for r in rows if r["kind"] == "step"]
    step_flops = max(r["flops"] for r in steps) if steps else None
    if step_flops is not None:  # `--programs` without a step program: no such line
        print(f"FLOPs per training step (the largest step program): {step_flops:.4g}")
    status, line = verdict(rows, topo.memory_bytes, topo_name, _hints(config, mesh))
    print(line)
    if out:
        record = {
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
            "topology": topo_name,
            "devices": len(topo.devices),
            "device_kind": topo.device_kind,
            "hosts": topo.processes,
            "device_memory": topo.memory_bytes,
            "mesh": dict(mesh.shape),
            "programs": rows,
            "step_flops": step_flops,
            "fits": status == 0,
            "verdict": line,
            "peak": None if chip is None else dataclasses.asdict(chip),
            "jobs": min(jobs, len(chosen)),
        }
        Path(out).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    from classkd_jax import cli

    sys.exit(cli.run(main, prog=PROG))
