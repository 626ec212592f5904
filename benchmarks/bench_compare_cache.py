"""The whole method comparison's wall-clock with and without the teacher cache.

    python benchmarks/bench_compare_cache.py --workdir DIR [--seeds 3] [--step_steps 20]

Times `python -m classkd_jax.compare --config configs/demo.py --methods
sft,kd,seqkd,gkd,minillm,distillm,classkd --seeds S` with and without
`--teacher_cache`, on this machine, in one run:

  - only the kd, classkd and distillm rows read the cache
    (`classkd_jax.training.checks.CACHE_METHODS`); the other rows' train
    commands are the same with and without it. The script checks that on
    both arms' `--dry_run` output, then runs those rows once (DIR/shared) and
    counts their time in both arms;
  - the cached rows run in both arms, alternating by method (kd live, kd
    cached, classkd live, ...), so a load that drifts during the hour moves
    both arms alike. The cached arm's first row (kd) builds the cache in
    DIR/cache/teacher_cache; the later rows reuse it, as one `compare
    --teacher_cache` would;
  - `--references DIR2` copies a finished comparison's scored references
    (the teacher and the student init, the same in every arm) into each
    workdir, so that no arm scores them; without it the first invocation of
    each workdir scores them and that time is counted in its row;
  - with `--step_steps N` (default 20), the KD step's live / cached time
    ratio follows (`bench_teacher_cache.step_times`, the same machine).

Each finished invocation's seconds are kept in DIR/bench.json: a rerun of the
same command skips them and times the rest (a killed benchmark resumes; the
one invocation it was in is timed again from its checkpoints, so rerun the
whole benchmark for clean numbers). benchmarks/README.md, "Teacher cache",
reports the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("sft", "kd", "seqkd", "gkd", "minillm", "distillm", "classkd")


def compare_argv(config: str, methods, seeds: int, workdir: Path, cached: bool, extra=()):
    argv = [sys.executable, "-m", "classkd_jax.compare", "--config", config]
    argv += ["--methods", ",".join(methods), "--seeds", str(seeds), "--workdir", str(workdir)]
    return argv + (["--teacher_cache"] if cached else []) + list(extra)


def dry_run(argv) -> dict[str, str]:
    """Each run's train command by its workdir (runs/<row>/seed<k>), from `--dry_run`."""
    out = subprocess.run(argv + ["--dry_run"], capture_output=True, text=True, check=True)
    commands = {}
    for line in out.stdout.splitlines():
        words = line.split()
        commands[words[words.index("--workdir") + 1]] = line
    return commands


def split_methods(config: str, seeds: int, extra) -> tuple[list[str], list[str]]:
    """(methods whose train commands differ with the cache, those that do not)."""
    where = Path(tempfile.mkdtemp(prefix="bench-compare-dry-"))
    live = dry_run(compare_argv(config, METHODS, seeds, where, False, extra))
    cache = dry_run(compare_argv(config, METHODS, seeds, where, True, extra))
    assert live.keys() == cache.keys(), (live.keys(), cache.keys())
    differ = {Path(run).parent.name for run in live if live[run] != cache[run]}
    return [m for m in METHODS if m in differ], [m for m in METHODS if m not in differ]


def timed(argv, log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.py"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--references", default="", help="a comparison dir whose references/ to copy")
    p.add_argument("--step_steps", type=int, default=20, help="KD step timing (0: skip)")
    args, extra = p.parse_known_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cached_methods, shared_methods = split_methods(args.config, args.seeds, extra)
    print(f"rows that read the cache: {cached_methods}; the same in both arms: {shared_methods}")
    arms = {"live": workdir / "live", "cache": workdir / "cache", "shared": workdir / "shared"}
    if args.references:
        for where in arms.values():
            if not (where / "references").exists():
                shutil.copytree(Path(args.references) / "references", where / "references")
    record_path = workdir / "bench.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    plan = [(m, arm) for m in cached_methods for arm in ("live", "cache")]
    plan.append(("+".join(shared_methods), "shared"))
    for methods, arm in plan:
        key = f"{arm}:{methods}"
        if key in record:
            continue
        argv = compare_argv(
            args.config, methods.split("+"), args.seeds, arms[arm], arm == "cache", extra
        )
        seconds = timed(argv, workdir / f"{arm}.log")
        record[key] = seconds
        record_path.write_text(json.dumps(record, indent=1))
        print(f"{key}: {seconds:.0f} s", flush=True)
    shared = sum(v for k, v in record.items() if k.startswith("shared:"))
    totals = {
        arm: shared + sum(v for k, v in record.items() if k.startswith(f"{arm}:"))
        for arm in ("live", "cache")
    }
    print("\n| row | live s | cached s | live / cached |\n|---|---|---|---|")
    for m in cached_methods:
        live, cache = record[f"live:{m}"], record[f"cache:{m}"]
        print(f"| {m} x {args.seeds} seeds | {live:.0f} | {cache:.0f} | {live / cache:.2f}x |")
    print(
        f"| {', '.join(shared_methods)} x {args.seeds} seeds (run once) | {shared:.0f} | "
        f"{shared:.0f} | 1 |"
    )
    live, cache = totals["live"], totals["cache"]
    print(
        f"| **the whole comparison** | **{live:.0f}** | **{cache:.0f}** | **{live / cache:.2f}x** |"
    )
    if args.step_steps:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_teacher_cache import demo_config, step_times

        from classkd_jax.teacher_cache import builder

        config = demo_config()
        cache_dir = Path(tempfile.mkdtemp(prefix="bench-compare-cache-"))
        builder.build(config, cache_dir, message=lambda _: None)
        times = step_times(config, cache_dir, args.step_steps)
        live, cache = times["live"]["step"], times["cache"]["step"]
        print(
            f"\nKD step, median of {args.step_steps} interleaved: live {live * 1e3:.1f} ms, "
            f"from the cache {cache * 1e3:.1f} ms: {live / cache:.2f}x; the student alone "
            f"{times['sft']['step'] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
