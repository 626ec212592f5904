"""Tables, CSV, JSON and bar charts of evaluation results.

The Markdown table is laid out like the ClassKD write-up's: one row per run,
benchmarks as columns in the published order, AVG last. Each cell is the mean
over seeds +- the sample standard deviation over seeds (ddof=1; a single seed
shows the mean alone). AVG's mean is the mean of the benchmark means (how the
write-up's AVG column is computed: GKD's 21.37 is the mean of its five cells);
its std is over the per-seed averages across benchmarks.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classkd_jax.evaluation.protocol import BENCHMARK_ORDER, BENCHMARK_TITLES
from classkd_jax.evaluation.runner import RunResults

AVG = "avg"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def columns(runs: Mapping[str, RunResults]) -> list[str]:
    """Benchmarks present in any run: the published order first, others after."""
    present = {b for res in runs.values() for b in res}
    return [b for b in BENCHMARK_ORDER if b in present] + sorted(present - set(BENCHMARK_ORDER))


def summarize(
    results: RunResults, benchmarks: Sequence[str], metric: str = "rougeL"
) -> dict[str, dict[str, Any]]:
    """Per benchmark (and AVG): mean, std, seeds. Missing benchmarks are omitted.

    AVG appears only when every benchmark in `benchmarks` has results.
    """
    summary: dict[str, dict[str, Any]] = {}
    for b in benchmarks:
        if b not in results or not results[b]:
            continue
        seeds = sorted(results[b])
        mean, std = mean_std([results[b][s][metric] for s in seeds])
        summary[b] = {"mean": mean, "std": std, "seeds": seeds}
    if benchmarks and all(b in summary for b in benchmarks):
        common = sorted(set.intersection(*(set(results[b]) for b in benchmarks)))
        per_seed = [
            sum(results[b][s][metric] for b in benchmarks) / len(benchmarks) for s in common
        ]
        std = mean_std(per_seed)[1] if per_seed else math.nan
        mean = sum(summary[b]["mean"] for b in benchmarks) / len(benchmarks)
        summary[AVG] = {"mean": mean, "std": std, "seeds": common}
    return summary


def _cell(entry: Mapping[str, Any] | None, bold: bool) -> str:
    if entry is None:
        return "–"
    text = f"{entry['mean']:.2f}"
    if not math.isnan(entry["std"]):
        text += f" ± {entry['std']:.2f}"
    return f"**{text}**" if bold else text


def markdown_table(
    runs: Mapping[str, RunResults], metric: str = "rougeL", bold_best: bool = True
) -> str:
    """The comparison table: `| Models | Dolly | ... | AVG |`, one row per run.

    Args:
      runs: run name -> {benchmark: {seed: metrics}}.
      metric: 'rougeL' or 'exact_match'.
      bold_best: bold the best mean of each column when several runs are shown.
    """
    cols = columns(runs)
    keys = [*cols, AVG]
    summaries = {name: summarize(res, cols, metric) for name, res in runs.items()}
    best = {}
    for k in keys:
        means = [s[k]["mean"] for s in summaries.values() if k in s]
        best[k] = max(means) if means else None
    header = ["Models", *(BENCHMARK_TITLES.get(b, b) for b in cols), "AVG"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, summary in summaries.items():
        show_best = bold_best and len(runs) > 1
        cells = [
            _cell(summary.get(k), show_best and summary.get(k, {}).get("mean") == best[k])
            for k in keys
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    seeds = sorted({s for res in runs.values() for per in res.values() for s in per})
    label = {"rougeL": "ROUGE-L", "exact_match": "Exact match"}.get(metric, metric)
    lines.append("")
    lines.append(
        f"{label} (x100), mean ± std (ddof=1) over seeds {', '.join(map(str, seeds))}; "
        "AVG = mean of the benchmark columns."
    )
    return "\n".join(lines) + "\n"


def write_scores_csv(path: str | os.PathLike, runs: Mapping[str, RunResults]) -> None:
    """One row per (run, benchmark, seed), then mean and std rows per benchmark."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "benchmark", "seed", "rougeL", "exact_match", "n"])
        for name, res in runs.items():
            cols = columns({name: res})
            for b in cols:
                for s in sorted(res[b]):
                    m = res[b][s]
                    w.writerow(
                        [name, b, s, f"{m['rougeL']:.4f}", f"{m['exact_match']:.4f}", m["n"]]
                    )
            rl, em = summarize(res, cols, "rougeL"), summarize(res, cols, "exact_match")
            for b in [*cols, AVG]:
                if b in rl:
                    for stat in ("mean", "std"):
                        w.writerow([name, b, stat, f"{rl[b][stat]:.4f}", f"{em[b][stat]:.4f}", ""])


def write_predictions_csv(
    path: str | os.PathLike, predictions: Mapping[str, Mapping[int, Sequence[Mapping]]]
) -> None:
    """Every scored example: benchmark, seed, uid, scores, prediction, references."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["benchmark", "seed", "uid", "rougeL", "exact_match", "prediction", "references"]
        )
        for b, per_seed in predictions.items():
            for s, recs in per_seed.items():
                for r in recs:
                    w.writerow(
                        [
                            b,
                            s,
                            r["uid"],
                            f"{r['rougeL']:.4f}",
                            f"{r['exact_match']:.1f}",
                            r["prediction"],
                            json.dumps(r["references"], ensure_ascii=False),
                        ]
                    )


def results_json(
    name: str,
    results: RunResults,
    predictions: Mapping[str, Mapping[int, Sequence[Mapping]]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready dict: summary, per-seed scores, every per-example prediction."""
    cols = columns({name: results})

    def clean(summary):  # NaN is not valid JSON
        return {
            k: {**v, "std": None if math.isnan(v["std"]) else v["std"]} for k, v in summary.items()
        }

    return {
        "run": name,
        **(extra or {}),
        "summary": {
            "rougeL": clean(summarize(results, cols, "rougeL")),
            "exact_match": clean(summarize(results, cols, "exact_match")),
        },
        "scores": {b: {str(s): m for s, m in per.items()} for b, per in results.items()},
        "predictions": {
            b: {str(s): [dict(r) for r in recs] for s, recs in per.items()}
            for b, per in predictions.items()
        },
    }


def plot_comparison(
    runs: Mapping[str, RunResults], path: str | os.PathLike, metric: str = "rougeL"
) -> None:
    """Grouped bar chart: benchmarks (and AVG) on x, one bar per run, std as error bars."""
    # The Agg canvas directly, not pyplot: no global backend switch, no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = columns(runs)
    keys = [*cols, AVG]
    labels = [*(BENCHMARK_TITLES.get(b, b) for b in cols), "AVG"]
    fig = Figure(figsize=(1.6 * len(keys) + 2, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(runs), 1)
    for i, (name, res) in enumerate(runs.items()):
        summary = summarize(res, cols, metric)
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(keys))]
        means = [summary[k]["mean"] if k in summary else 0.0 for k in keys]
        errs = [
            0.0 if k not in summary or math.isnan(summary[k]["std"]) else summary[k]["std"]
            for k in keys
        ]
        bars = ax.bar(xs, means, width, yerr=errs, capsize=2, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(keys)), labels)
    ax.set_ylabel({"rougeL": "ROUGE-L", "exact_match": "Exact match"}.get(metric, metric))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_reports(
    out_dir: str | os.PathLike,
    runs: Mapping[str, RunResults],
    predictions: Mapping[str, Mapping[str, Mapping[int, Sequence[Mapping]]]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Writes table.md, scores.csv, and per run with predictions results.json /
    predictions.csv; with several runs also comparison.png. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "scores_csv": out / "scores.csv"}
    table = markdown_table(runs) + "\n" + markdown_table(runs, metric="exact_match")
    paths["table"].write_text(table, encoding="utf-8")
    write_scores_csv(paths["scores_csv"], runs)
    for name, preds in (predictions or {}).items():
        suffix = "" if len(predictions) == 1 else f"_{name}"
        paths[f"json{suffix}"] = out / f"results{suffix}.json"
        paths[f"json{suffix}"].write_text(
            json.dumps(results_json(name, runs[name], preds, extra), ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        paths[f"predictions_csv{suffix}"] = out / f"predictions{suffix}.csv"
        write_predictions_csv(paths[f"predictions_csv{suffix}"], preds)
    if len(runs) > 1:
        paths["plot"] = out / "comparison.png"
        plot_comparison(runs, paths["plot"])
    return paths
