"""A comparison's table: one row per method (or swept value), mean ± std over seeds.

A `M+mf` row sits beside its base row `M` (`plan.parse_methods`), with the
gap: mean ± std of the per-seed differences (`mf_gap`; orange bars in the chart).

    rows = summarize(results)                     # from execute.run_all
    write_all(DIR, rows, references, split="test", command="python -m ...")

Writes `results.md`, `results.csv`, `results.json` and `results.png` (with
`split='dev'`: `results_dev.*`, so a tuning sweep never overwrites the test
table). The std is the sample standard deviation over seeds (ddof=1; a
single seed has none). Wall-clock is each run's time in the trainer
(start-up, compiles and data loading included), so rows compare at equal
steps (the table) and, through `train s` and `x SFT`, at equal compute.
"""

from __future__ import annotations

import csv
import datetime
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classkd_jax.comparison.execute import RunResult
from classkd_jax.evaluation import report
from classkd_jax.evaluation.runner import write_json_atomic

METRICS = (("rougeL", "rouge_l"), ("exact_match", "exact_match"))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample std), the std None for a single value (JSON has no NaN)."""
    mean, std = report.mean_std(values)
    return mean, None if math.isnan(std) else std


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One dict per row, in plan order: mean/std of each metric and of the wall-clock."""
    rows: dict[str, list[RunResult]] = {}
    for r in results:
        rows.setdefault(r.spec.row, []).append(r)
    out = []
    for name, runs in rows.items():
        row: dict[str, Any] = {
            "row": name,
            "method": runs[0].spec.method,
            "sweep": dict(runs[0].spec.sweep),
            "seeds": [r.spec.seed for r in runs],
            "steps": runs[0].steps,
        }
        for key, out_key in METRICS:
            row[out_key], row[f"{out_key}_std"] = mean_std([r.metrics[key] for r in runs])
        row["train_seconds"], row["train_seconds_std"] = mean_std([r.train_seconds for r in runs])
        row["n"] = runs[0].metrics["n"]
        row["runs"] = [
            {
                "seed": r.spec.seed,
                "rouge_l": r.metrics["rougeL"],
                "exact_match": r.metrics["exact_match"],
                "train_seconds": r.train_seconds,
                "workdir": str(r.spec.workdir),
            }
            for r in runs
        ]
        out.append(row)
    return _twin_gaps(out)


def _twin_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each `M+mf` row whose base row `M` (same sweep) ran gets `mf_gap`: per metric
    the mean and sample std over the shared seeds of (twin - base), seeds paired
    (same seed, data order and initial weights)."""
    by_name = {r["row"]: r for r in rows}
    for r in rows:
        head, _, rest = r["row"].partition(" ")
        if not head.endswith("+mf"):
            continue
        base = by_name.get(" ".join(filter(None, [head[: -len("+mf")], rest])))
        if base is None:
            continue
        mine = {run["seed"]: run for run in r["runs"]}
        theirs = {run["seed"]: run for run in base["runs"]}
        seeds = [s for s in mine if s in theirs]
        if not seeds:
            continue
        gap: dict[str, Any] = {"base": base["row"], "seeds": seeds}
        for _, key in METRICS:
            gap[key], gap[f"{key}_std"] = mean_std([mine[s][key] - theirs[s][key] for s in seeds])
        r["mf_gap"] = gap
    return rows


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown(rows: Sequence[Mapping], references: Mapping[str, Mapping], split: str) -> str:
    """The Markdown table: references first (one model each), then the rows."""
    base = next((r["train_seconds"] for r in rows if r["method"] == "sft" and not r["sweep"]), None)
    lines = [
        "| model | seeds | steps | ROUGE-L | exact match | train s | x SFT time |",
        "|---|---|---|---|---|---|---|",
    ]
    twins = any("mf_gap" in r for r in rows)
    if twins:  # a +mf twin's gap to its base row, paired over seeds
        lines = [lines[0] + " +mf gap ROUGE-L |", lines[1] + "---|"]
    for name, ref in references.items():
        secs = ref.get("train_seconds")
        lines.append(
            f"| {name} (reference) | – | {ref.get('steps') or '–'} | {ref['rougeL']:.2f} | "
            f"{ref['exact_match']:.2f} | {f'{secs:.0f}' if secs else '–'} | – |"
            + (" – |" if twins else "")
        )
    best = max(r["rouge_l"] for r in rows) if rows else None
    for r in rows:
        rl = _pm(r["rouge_l"], r["rouge_l_std"])
        if len(rows) > 1 and r["rouge_l"] == best:
            rl = f"**{rl}**"
        ratio = f"{r['train_seconds'] / base:.2f}" if base else "–"
        lines.append(
            f"| {r['row']} | {len(r['seeds'])} | {r['steps']} | {rl} | "
            f"{_pm(r['exact_match'], r['exact_match_std'])} | {r['train_seconds']:.0f} | {ratio} |"
            + (f" {_gap(r.get('mf_gap'))} |" if twins else "")
        )
    n = rows[0]["n"] if rows else next(iter(references.values()), {}).get("n", 0)
    lines += [
        "",
        f"{split} split, {n} examples, greedy; mean ± std (ddof=1) over seeds; train s: "
        "wall-clock per run in the trainer (start-up and compiles included).",
    ]
    if twins:
        lines.append(
            "+mf gap: the +mf row minus its base row, mean ± std (ddof=1) of the "
            "per-seed differences (paired seeds)."
        )
    return "\n".join(lines) + "\n"


def _gap(gap: Mapping | None) -> str:
    if gap is None:
        return "–"
    mean, std = gap["rouge_l"], gap["rouge_l_std"]
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def write_csv(path: Path, rows: Sequence[Mapping], references: Mapping[str, Mapping]) -> None:
    """One line per run (seed), then one per reference model."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "method", "seed", "steps", "rouge_l", "exact_match", "train_seconds"])
        for r in rows:
            for run in r["runs"]:
                w.writerow(
                    [
                        r["row"],
                        r["method"],
                        run["seed"],
                        r["steps"],
                        f"{run['rouge_l']:.4f}",
                        f"{run['exact_match']:.4f}",
                        f"{run['train_seconds']:.1f}",
                    ]
                )
        for name, ref in references.items():
            secs = ref.get("train_seconds")
            w.writerow(
                [
                    name,
                    "reference",
                    "",
                    ref.get("steps") or "",
                    f"{ref['rougeL']:.4f}",
                    f"{ref['exact_match']:.4f}",
                    f"{secs:.1f}" if secs else "",
                ]
            )


def plot(path: Path, rows: Sequence[Mapping], references: Mapping[str, Mapping]) -> None:
    """Bars of ROUGE-L and exact match per row (std as error bars), references dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.0 * len(rows) + 3), 7.0))
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate((("rouge_l", "ROUGE-L"), ("exact_match", "exact match"))):
        ax = fig.add_subplot(2, 1, i + 1)
        xs = range(len(rows))
        means = [r[key] for r in rows]
        errs = [r[f"{key}_std"] or 0.0 for r in rows]
        colors = ["tab:orange" if "+mf" in r["row"].split(" ")[0] else "tab:blue" for r in rows]
        bars = ax.bar(xs, means, 0.6, yerr=errs, capsize=3, color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ref_key = "rougeL" if key == "rouge_l" else key
        for (name, ref), style in zip(references.items(), ("--", ":"), strict=False):
            ax.axhline(ref[ref_key], color="gray", linestyle=style, label=name)
        ax.set_xticks(list(xs), [r["row"].replace(" ", "\n") for r in rows], fontsize=7)
        ax.set_ylabel(label)
        if references:
            ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_all(
    workdir: Path,
    rows: Sequence[Mapping],
    references: Mapping[str, Mapping],
    *,
    split: str,
    command: str,
    json_name: str = "results",
) -> dict[str, Path]:
    """Writes the table as Markdown, CSV, JSON and a PNG chart; returns the paths.
    `json_name` names the JSON file (the demo keeps results.json for its summary)."""
    stem = "results" if split == "test" else f"results_{split}"
    paths = {ext: workdir / f"{stem}.{ext}" for ext in ("md", "csv", "png")}
    paths["json"] = workdir / f"{json_name if split == 'test' else json_name + '_' + split}.json"
    table = markdown(rows, references, split)
    paths["md"].write_text(f"`{command}`\n\n{table}", encoding="utf-8")
    write_csv(paths["csv"], rows, references)
    write_json_atomic(
        paths["json"],
        {
            "command": command,
            "date": datetime.date.today().isoformat(),
            "split": split,
            "references": dict(references),
            "rows": list(rows),
        },
    )
    plot(paths["png"], rows, references)
    return paths
