r"""Every method from the same teacher, student init, data, steps and seeds, in one table.

    python -m classkd_jax.compare --config configs/demo.py \
        --methods sft,kd,seqkd,gkd,minillm,distillm,classkd --seeds 3 --workdir DIR
    python -m classkd_jax.compare --config configs/demo.py --sweep misfeedback.weight=0,0.1,0.3 \
        --seeds 3 --workdir DIR --split dev            # an ablation, on the dev split
    python -m classkd_jax.compare --config configs/classkd.py:pair=gpt2-xl/gpt2 \
        --config.teacher.path=... --config.student.path=... --workdir DIR --dry_run

`--config` is a method's file (configs/<method>.py[:variant]: each method
gets its own file with the same variant) or configs/demo.py (each method is
its `method=` variant). `--config.KEY=VALUE` overrides apply to every run.
`--methods` also takes `gkd+mf`, `distillm+mf`, `minillm+mf`: the method with
ClassKD's misfeedback term and classmate, listed beside its base row with the
paired gap (docs/comparing.md).
`--sweep KEY=V1,V2,...` adds a row per value (several --sweep: their grid);
without --methods a sweep runs the config's own method. `--seeds N` runs
seeds 0..N-1 (or `--seeds 0,4,7`; seed 4 alone: `--seeds 4,`); a run's seed is both `seed` and
`data.seed`, the same for every method.

Each run is `python -m classkd_jax.train` on `DIR/runs/<row>/seed<k>` (the
train workdir: checkpoints, metrics.jsonl, student_hf), then greedy scoring
of its student on the `--split` (default test) of the config's data. The
teacher and the student initialisation are scored too when the config
loads them from Hugging Face directories. A rerun resumes: finished runs are
not retrained, an interrupted run continues from its checkpoint.

DIR receives results.md, results.csv, results.json and results.png (with
--split dev: results_dev.*). `--dry_run` prints the train command of every
run and exits (to launch them on a cluster one by one). `--teacher_cache`:
the kd, classkd and distillm rows read their dataset rows' teacher from one
cache under DIR/teacher_cache, built once and shared by methods and seeds
(docs/teacher_cache.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from classkd_jax import cli

PROG = "python -m classkd_jax.compare"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", required=True, help="configs/<method>.py[:variant] or configs/demo.py"
    )
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all seven)")
    p.add_argument(
        "--seeds", default="1", help="a count N (seeds 0..N-1) or a list 0,1,2 (one seed k: k,)"
    )
    p.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2", help="a row per value"
    )
    p.add_argument("--workdir", required=True, help="the comparison's directory (reused to resume)")
    p.add_argument("--split", default="test", help="scored split: test (default) or dev")
    p.add_argument("--dry_run", action="store_true", help="print every train command and exit")
    p.add_argument(
        "--teacher_cache",
        action="store_true",
        help="kd and classkd read their dataset rows' teacher from one cache, built once under "
        "DIR/teacher_cache and shared by methods and seeds (docs/teacher_cache.md)",
    )
    g = p.add_argument_group("--estimate: FLOPs and device-hours by our accounting, nothing runs")
    g.add_argument("--estimate", action="store_true", help="print each row's cost and exit")
    g.add_argument("--train_examples", type=int, default=14000, help="(Dolly: about 14000)")
    g.add_argument("--mean_length", type=int, default=0, help="padded row length (0: max/2)")
    g.add_argument("--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation")
    return p


DEVICES = (("A100", 312.0), ("H100", 989.0), ("TPU v5p", 459.0), ("TPU v5e", 197.0))


def estimate(prepared, args) -> str:
    """A Markdown table of each row's FLOPs per seed and the device-hours at `args.mfu`."""
    from classkd_jax.comparison import cost

    head = " | ".join(f"{name} h" for name, _ in DEVICES)
    lines = [f"| row | steps | PFLOP per seed | {head} |", "|" + "---|" * (3 + len(DEVICES))]
    seen, total, caches = set(), 0.0, {}
    for spec, config in prepared:
        length = args.mean_length or int(config.data.max_length) // 2
        flops = cost.run_flops(config, train_examples=args.train_examples, mean_length=length)
        total += flops
        key = cost.cache_key(config)
        if key is not None and key not in caches:  # built once, shared by rows and seeds
            caches[key] = cost.cache_build_flops(
                config, train_examples=args.train_examples, mean_length=length
            )
            total += caches[key]
        if spec.row in seen:
            continue
        seen.add(spec.row)
        hours = " | ".join(f"{flops / (peak * 1e12 * args.mfu) / 3600:.1f}" for _, peak in DEVICES)
        steps = cost.total_steps(config, args.train_examples)
        lines.append(f"| {spec.row} | {steps} | {flops / 1e15:.0f} | {hours} |")
    hours = ", ".join(f"{total / (p * 1e12 * args.mfu) / 3600:.1f} {n}" for n, p in DEVICES)
    if caches:
        build = sum(caches.values())
        lines.append(
            f"| teacher cache ({len(caches)} build(s), once) | – | {build / 1e15:.0f} | "
            + " | ".join(f"{build / (p * 1e12 * args.mfu) / 3600:.1f}" for _, p in DEVICES)
            + " |"
        )
    lines += [
        "",
        f"All {len(prepared)} runs: {total / 1e15:.0f} PFLOP = device-hours {hours} at "
        f"{args.mfu:.0%} MFU of the bf16 peak ({args.train_examples} training examples"
        + ("; the teacher cache's build included)." if caches else ")."),
    ]
    return "\n".join(lines)


def _default_methods(config: str, sweeps) -> list[str]:
    from classkd_jax.comparison.plan import METHODS

    if not sweeps:
        return list(METHODS)
    path, _, arg = config.partition(":")
    stem = Path(path).stem
    if stem in METHODS:
        return [stem]
    for item in arg.split(","):
        if item.strip().startswith("method="):
            return [item.split("=", 1)[1].strip()]
    return ["classkd"]  # configs/demo.py's default method


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    from classkd_jax.comparison import plan, tables
    from classkd_jax.training import logs

    if not Path(args.config.partition(":")[0]).is_file():
        raise cli.UserError(f"--config {args.config}: no such config file")
    sweeps = [plan.parse_sweep(s) for s in args.sweep]
    methods = (
        plan.parse_methods(args.methods) if args.methods else _default_methods(args.config, sweeps)
    )
    seeds = plan.parse_seeds(args.seeds)
    workdir = Path(args.workdir)
    from classkd_jax.training.checks import CACHE_METHODS

    cached = CACHE_METHODS if args.teacher_cache else ()
    specs = plan.plan_runs(args.config, methods, seeds, sweeps, overrides, workdir, cached)
    if args.dry_run:
        for spec in specs:
            print(shlex.join(["python", "-m", "classkd_jax.train", *spec.argv]))
        return 0
    if args.estimate:
        from classkd_jax.comparison import execute

        print(estimate(execute.prepare(specs), args))
        return 0
    logs.quiet_libraries()
    from classkd_jax.comparison import execute, scoring

    if args.split not in scoring.SPLITS:
        raise cli.UserError(f"--split {args.split!r}; expected one of {scoring.SPLITS}")
    prepared = execute.prepare(specs)
    workdir.mkdir(parents=True, exist_ok=True)
    cli.set_log_file(workdir / "compare.log")

    def say(line: str) -> None:
        print(f"compare: {line}", file=sys.stderr, flush=True)

    say(f"{len(specs)} runs ({len(methods)} method(s) x {len(seeds)} seed(s)) -> {workdir}")
    try:
        results = execute.run_all(prepared, args.split, say)
    except execute.Interrupted as stop:
        say(f"{stop}; rerun the same command to resume")
        return stop.status
    with logs.to_file(workdir / "compare.log"):
        references = execute.score_references(prepared[0][1], args.split, workdir, say)
    rows = tables.summarize(results)
    command = f"{PROG} {shlex.join(argv)}"
    paths = tables.write_all(workdir, rows, references, split=args.split, command=command)
    print(tables.markdown(rows, references, args.split))
    say(f"table: {paths['md']} (also .csv, .json; chart {paths['png']})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
