r"""The quick-start job: ClassKD against SFT and GKD on the built-in synthetic task.

    python -m classkd_jax.demo --workdir runs/demo          # what launch/demo.sh runs
    python -m classkd_jax.demo --workdir runs/demo --seeds 3 --retrain

From the teacher and the student's SFT initialisation shipped in
`classkd_jax/assets/demo/` (made by `python -m classkd_jax.train`, see
configs/demo.py; `--retrain` makes them again first, in DIR/shipped/), it
trains the student three ways on the same init, data, steps and seeds:
plain SFT, GKD, and ClassKD (classmate trained alongside, on-policy samples,
misfeedback), then scores teacher, init and every student on the test split
(600 examples, greedy ROUGE-L and exact match). It is
`python -m classkd_jax.compare --config configs/demo.py --methods
sft,gkd,classkd` plus the references, the curves and the demo's summary.

DIR receives compare's results.md, results.csv, results.png, table.json
(the rows) and runs/, and:
  results.json  teacher, student_init, sft_student, gkd_student, classkd_student:
                rouge_l, exact_match (0-100), their std over seeds (None for
                the one teacher and init), train_seconds, steps
  curves.png    training curves: each method's loss, ClassKD's classmate gap
                KL(p||c) - KL(p||q) and its misfeedback term
`--config.KEY=VALUE` overrides reach every run (e.g. --config.steps=100).
A rerun resumes: finished runs are not retrained.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from classkd_jax import cli

PROG = "python -m classkd_jax.demo"
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.py")
ASSETS = Path(__file__).resolve().parent / "assets" / "demo"
METHODS = ("sft", "gkd", "classkd")
# demo.json's keys: the contract.
KEYS = {"teacher": "teacher", "student_init": "student_init", "sft": "sft_student",
        "gkd": "gkd_student", "classkd": "classkd_student"}  # fmt: skip


def shipped() -> dict[str, Path]:
    """The shipped demo models (Hugging Face directories): teacher, student_init."""
    return {name: ASSETS / name for name in ("teacher", "student_init")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", default="runs/demo", help="output directory (reused to resume)")
    p.add_argument(
        "--seeds", default="1", help="a count N (seeds 0..N-1) or a list 0,1,2 (1 fits 10 min)"
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the teacher and the student init first (DIR/shipped/) instead of "
        "using the shipped ones",
    )
    p.add_argument("--size", default="demo", choices=("demo", "tiny"), help="tiny: the tests' size")
    return p


def retrain(workdir: Path, size: str, overrides: Sequence[str], say) -> dict[str, Path]:
    """Trains the teacher and the student init as the shipped ones were made;
    returns their exported Hugging Face directories."""
    import time

    from classkd_jax.evaluation import runner
    from classkd_jax.train import parse_flags
    from classkd_jax.training.run import train

    out = {}
    for i, role in enumerate(("teacher", "student_init"), 1):
        run_dir = workdir / "shipped" / role
        spec = f"{CONFIG}:method=sft,role={role},size={size}"
        argv = ["--config", spec, "--workdir", str(run_dir)]
        keep = [o for o in overrides if o.startswith(("--config.progress", "--config.compilation"))]
        config, _ = parse_flags([*argv, *keep])
        say(f"retrain [{i}/2] {role} -> {run_dir}")
        model = run_dir / "student_hf"
        if not (model / "TRAINED.json").is_file():
            start = time.perf_counter()
            status = train(config, run_dir)
            if status != 0:
                raise SystemExit(status)
            runner.write_json_atomic(
                model / "TRAINED.json",
                {
                    "command": shlex.join(["python", "-m", "classkd_jax.train", *argv]),
                    "steps": int(config.steps),
                    "train_seconds": time.perf_counter() - start,
                },
            )
        out[role] = model
    return out


def curves(path: Path, results, references) -> None:
    """Training curves (mean over seeds): each method's loss; ClassKD's gap and misfeedback."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(run_dir: Path, key: str) -> dict[int, float]:
        out = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if key in record and "step" in record and record[key] is not None:
                out[int(record["step"])] = float(record[key])
        return out

    def mean_curve(method: str, key: str):
        runs = [series(r.spec.workdir, key) for r in results if r.spec.method == method]
        steps = sorted(set.intersection(*(set(s) for s in runs))) if runs else []
        return steps, [sum(s[k] for s in runs) / len(runs) for k in steps]

    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    panels = [
        ("student training loss (each method's own)", [(m, "loss") for m in METHODS]),
        ("classmate gap KL(p||c) - KL(p||q), nats", [("classkd", "gap")]),
        ("misfeedback term (on-policy steps)", [("classkd", "misfeedback")]),
    ]
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for method, key in lines:
            xs, ys = mean_curve(method, key)
            if xs:
                ax.plot(xs, ys, label=method)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(rows, references) -> dict:
    """results.json: the five models' test scores (std over seeds; None for one model)."""
    out = {}
    for name in ("teacher", "student_init"):
        if name in references:
            ref = references[name]
            out[KEYS[name]] = {
                "rouge_l": ref["rougeL"],
                "rouge_l_std": None,
                "exact_match": ref["exact_match"],
                "exact_match_std": None,
                "train_seconds": ref.get("train_seconds"),
                "steps": ref.get("steps"),
            }
    for row in rows:
        out[KEYS[row["method"]]] = {
            k: row[k]
            for k in (
                "rouge_l",
                "rouge_l_std",
                "exact_match",
                "exact_match_std",
                "train_seconds",
                "steps",
                "seeds",
            )
        }
    return out


def verdict(rows) -> list[str]:
    """One line per distilled method: its ROUGE-L against SFT's, and whether the gap
    is outside the seeds' spread (larger than the two stds together)."""
    by = {row["method"]: row for row in rows}
    if "sft" not in by:
        return []
    sft = by["sft"]
    lines = []
    for method in ("gkd", "classkd"):
        if method not in by:
            continue
        row = by[method]
        gap = row["rouge_l"] - sft["rouge_l"]
        line = f"{method} vs sft: {gap:+.2f} ROUGE-L at equal steps"
        if row.get("rouge_l_std") is not None and sft.get("rouge_l_std") is not None:
            spread = row["rouge_l_std"] + sft["rouge_l_std"]
            where = "outside" if abs(gap) > spread else "inside"
            line += f", {where} the seeds' spread ({spread:.2f}, {len(row['seeds'])} seeds)"
        else:
            line += " (one seed: --seeds 3 measures the spread)"
        ratio = row["train_seconds"] / sft["train_seconds"] if sft["train_seconds"] else None
        if ratio:
            line += f"; {ratio:.1f}x SFT's wall-clock"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    import time

    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = build_parser().parse_known_args(argv)
    from classkd_jax.comparison import execute, plan, tables
    from classkd_jax.evaluation import runner
    from classkd_jax.training import logs

    logs.quiet_libraries()
    workdir = Path(args.workdir)
    seeds = plan.parse_seeds(args.seeds)
    plan.check_overrides(overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    cli.set_log_file(workdir / "demo.log")
    start = time.perf_counter()

    def say(line: str) -> None:
        print(f"demo: {line}", file=sys.stderr, flush=True)

    models = shipped()
    if args.retrain:
        models = retrain(workdir, args.size, overrides, say)
    elif args.size == "tiny" and not any(o.startswith("--config.teacher.path=") for o in overrides):
        raise cli.UserError(
            "--size tiny has no shipped models: add --retrain, or give --config.teacher.path "
            "and --config.student.path"
        )
    paths = []  # the shipped models are configs/demo.py's own paths
    if args.retrain:
        paths = [
            f"--config.teacher.path={models['teacher']}",
            f"--config.student.path={models['student_init']}",
        ]
    # The same runs as `compare --config configs/demo.py --methods ... --workdir DIR`,
    # so a comparison in the demo's directory reuses them.
    config = CONFIG if args.size == "demo" else f"{CONFIG}:size={args.size}"
    specs = plan.plan_runs(config, METHODS, seeds, [], [*paths, *overrides], workdir)
    prepared = execute.prepare(specs)
    say(
        f"{len(specs)} runs (sft, gkd, classkd x {len(seeds)} seed(s)) from the "
        f"{'retrained' if args.retrain else 'shipped'} teacher and student init -> {workdir}"
    )
    try:
        results = execute.run_all(prepared, "test", say)
    except execute.Interrupted as stop:
        say(f"{stop}; rerun the same command to resume")
        return stop.status
    with logs.to_file(workdir / "demo.log"):
        references = execute.score_references(prepared[0][1], "test", workdir, say)
    rows = tables.summarize(results)
    command = f"{PROG} {shlex.join(argv)}"
    tables.write_all(workdir, rows, references, split="test", command=command, json_name="table")
    curves(workdir / "curves.png", results, references)
    runner.write_json_atomic(workdir / "results.json", summary(rows, references))
    print(tables.markdown(rows, references, "test"))
    for line in verdict(rows):
        say(line)
    say(
        f"done in {time.perf_counter() - start:.0f} s: {workdir / 'results.json'}, results.md, "
        f"results.png, curves.png; the ClassKD students: {workdir / 'runs' / 'classkd'}/"
        "seed*/student_hf"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
