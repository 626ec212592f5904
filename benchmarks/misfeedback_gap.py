"""Test ROUGE-L against the measured student-classmate gap, per run of a compare
workdir (docs/testbed.md, "Misfeedback on the sampling baselines").

    python benchmarks/misfeedback_gap.py runs/mf --plot docs/misfeedback_gap.png

For every `DIR/runs/<row>/seed<k>` with a `scores_test.json`, it reads the
run's score and the trainer's logged `gap` (the running average of KL(p||c) -
KL(p||q), teacher p, student q, classmate c; positive: the classmate is further
from the teacher than the student), averaged over the run's log records. It
prints one line per row (mean and std over seeds of both) and, with `--plot`,
draws every run as a point (a `+mf` row in its base method's colour, a sweep
row as triangles) and every row without a classmate as a dashed line at its
mean with a band of +- one std, for reference (a sweep row without a
classmate, e.g. `gkd__steps=320`, is listed but not drawn).

With a classmate, a row also gives the share of steps on which the classmate
updated (`classmate_updated_by_step`: its `update_every` and `min_gap` allowed it).
It also prints, for every `+mf` row, the paired gap to its base method: the
mean +- std over the seeds both have of the per-seed difference in test
ROUGE-L, against the base row (`minillm` for `minillm+mf` and its sweeps) and,
for the plain `+mf` row, against every sweep row of the base (e.g.
`minillm__steps=320`, the base given the `+mf` run's wall-clock).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path


def run_points(root: Path) -> dict[str, list[tuple[int, float, float | None]]]:
    """{row: [(seed, test ROUGE-L, mean logged gap or None), ...]}."""
    return {row: [p[:3] for p in points] for row, points in _runs(root).items()}


def update_shares(root: Path) -> dict[str, list[float]]:
    """{row: [share of its logged steps on which the classmate updated, per seed]}
    (rows with a classmate only)."""
    return {
        row: [p[3] for p in points]
        for row, points in _runs(root).items()
        if points[0][3] is not None
    }


def _runs(root: Path) -> dict[str, list[tuple[int, float, float | None, float | None]]]:
    rows: dict[str, list] = {}
    for scores in sorted(root.glob("runs/*/seed*/scores_test.json")):
        run = scores.parent
        rouge = json.loads(scores.read_text())["rougeL"]
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        gaps = [r["gap"] for r in records if "gap" in r]
        gap = statistics.mean(gaps) if gaps else None
        updated = [u for r in records for u in r.get("classmate_updated_by_step", [])]
        share = statistics.mean(updated) if updated else None
        rows.setdefault(run.parent.name, []).append((int(run.name[4:]), rouge, gap, share))
    return rows


def paired_gaps(rows: dict[str, list]) -> list[tuple[str, str, int, float, float]]:
    """[(mf row, base row, seeds paired, mean difference, std of differences)]."""
    out = []
    for row, points in rows.items():
        if "+mf" not in row:
            continue
        method = row.split("+")[0]
        mine = {seed: rouge for seed, rouge, _ in points}
        for base, base_points in rows.items():
            # a sweep of the `+mf` row is paired with the plain base only
            if base != method and ("__" in row or not base.startswith(method + "__")):
                continue
            diffs = [mine[s] - r for s, r, _ in base_points if s in mine]
            if diffs:
                std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                out.append((row, base, len(diffs), statistics.mean(diffs), std))
    return out


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} +- {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="a compare --workdir")
    parser.add_argument("--plot", type=Path, help="write the scatter here (.png)")
    args = parser.parse_args()
    rows = run_points(args.workdir)
    shares = update_shares(args.workdir)
    for row, points in rows.items():
        gaps = [g for _, _, g in points if g is not None]
        gap = f"gap {statistics.mean(gaps):+.4f} nats" if gaps else "no classmate"
        if row in shares:
            gap += f", classmate updated on {100 * statistics.mean(shares[row]):.0f}% of steps"
        print(
            f"{row:40s} seeds {len(points)}  ROUGE-L {_mean_std([r for _, r, _ in points])}  {gap}"
        )
    for row, base, n, mean, std in paired_gaps(rows):
        print(f"paired {row} - {base}: {mean:+.2f} +- {std:.2f} over {n} seeds")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        base_colors = {}  # a method's band takes its `+mf` twin's colour
        others = itertools.cycle(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                                  "tab:cyan", "tab:gray", "black"])  # fmt: skip
        for row in rows:
            base = row.split("+")[0]
            if "__" not in row:
                base_colors.setdefault(base, f"C{len(base_colors)}")
        for row, points in rows.items():
            base = row.split("+")[0]
            if points[0][2] is None:
                if "__" in row:
                    continue
                values = [r for _, r, _ in points]
                mean = statistics.mean(values)
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                color = base_colors[base]
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
                ax.axhline(mean, color=color, lw=1, ls="--", label=f"{row}, no classmate")
            else:
                color = base_colors[base] if "__" not in row else next(others)
                marker = "o" if "__" not in row else "^"
                xs, ys = [g for *_, g in points], [r for _, r, _ in points]
                ax.scatter(xs, ys, color=color, marker=marker, label=row)
        ax.set_xlabel("mean logged gap KL(p||c) - KL(p||q), nats (> 0: classmate behind)")
        ax.set_ylabel("test ROUGE-L")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
