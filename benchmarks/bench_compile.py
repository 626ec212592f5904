r"""Compile every pair config for the slices the README names; a markdown table of per-device GiB.

    python benchmarks/bench_compile.py [--pairs all] [--topologies v5e:4x4,h100:8] \
        [--method classkd] [--jsonl out.jsonl] [--programs largest-step]

Runs `python -m classkd_jax.compile` once per (pair, topology), one at a time
(a large compile takes 30-95 s and ~3 GB of host memory), with the pair's
defaults from `configs/_base.py` (by default only the largest train step, the
largest program of every pair measured), and prints a row per run as it finishes:
the largest program, its per-device total, the device's memory, the
verdict, the wall time. `--jsonl` appends each run's record (resumable: runs
already in the file are skipped). Needs the `compile` extra.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
TOPOLOGIES = ("v5e:4x4", "h100:8", "v5p:2x2x1", "v6e:2x4", "a100:8", "h200:8")


def pairs() -> list[str]:
    from classkd_jax.config_utils import import_sibling

    return list(import_sibling(str(ROOT / "configs" / "x.py"), "_base").PAIRS)


def command(method: str, pair: str, topology: str, programs: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "classkd_jax.compile",
        "--config",
        f"configs/{method}.py:pair={pair}",
        "--topology",
        topology,
        "--programs",
        programs,
        "--out",
        str(out),
    ]


def run(method: str, pair: str, topology: str, programs: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compile.json"
        cmd = command(method, pair, topology, programs, out)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        shown = " ".join(cmd[2:4] + [c for c in cmd[4:] if not c.startswith(tmp)][:-1])
        record = {"pair": pair, "topology": topology, "status": proc.returncode, "wall_s": wall}
        record["command"] = f"python -m {shown}"
        if out.exists():
            record.update(json.loads(out.read_text()))
        else:
            record["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
        record.pop("config", None)
        return record


def row(r: dict) -> str:
    if "programs" not in r:
        return f"| {r['pair']} | {r['topology']} | - | - | error: {r.get('error', '')} | {r['wall_s']:.0f} s |"  # noqa: E501
    worst = max(r["programs"], key=lambda p: p.get("total", float("inf")))
    total = "OOM" if "total" not in worst else f"{worst['total'] / GIB:.2f}"
    verdict = "fits" if r["fits"] else "**does not fit**"
    return (
        f"| {r['pair']} | {r['topology']} | {worst['program']} | {total} / "
        f"{r['device_memory'] / GIB:.2f} | {verdict} | {r['wall_s']:.0f} s |"
    )


def pivot(records: list[dict]) -> str:
    """One row per pair, one column per topology: per-device GiB of the largest
    program (of the device's memory), and the smallest v5e slice that fits."""
    tops = list(dict.fromkeys(r["topology"] for r in records))
    names = list(dict.fromkeys(r["pair"] for r in records))
    by = {(r["pair"], r["topology"]): r for r in records}
    main = [t for t in tops if t in TOPOLOGIES]
    lines = [
        "| pair | " + " | ".join(main) + " | smallest v5e slice that fits |",
        "|---|" + "---|" * (len(main) + 1),
    ]
    for name in names:
        cells = []
        for t in main:
            r = by.get((name, t))
            if r is None or "programs" not in r:
                cells.append("-")
                continue
            worst = max(r["programs"], key=lambda p: p.get("total", float("inf")))
            gib = "OOM" if "total" not in worst else f"{worst['total'] / GIB:.1f}"
            mark = "" if r["fits"] else " (does not fit)"
            cells.append(f"{gib} / {r['device_memory'] / GIB:.2f}{mark}")
        v5e = sorted(
            (r["devices"], t)
            for (n, t), r in by.items()
            if n == name and t.startswith("v5e") and r.get("fits")
        )
        cells.append(v5e[0][1] if v5e else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="all")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--method", default="classkd")
    parser.add_argument("--programs", default="largest-step")
    parser.add_argument("--jsonl", default="")
    parser.add_argument("--table", action="store_true", help="print the --jsonl runs as a table")
    args = parser.parse_args()
    if args.table:
        records = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines()]
        print(pivot(records))
        return
    names = pairs() if args.pairs == "all" else args.pairs.split(",")
    done = set()
    path = Path(args.jsonl) if args.jsonl else None
    if path and path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["pair"], r["topology"]))
            print(row(r), flush=True)
    print("| pair | topology | largest program | GiB per device / HBM | verdict | wall |")
    print("|---|---|---|---|---|---|", flush=True)
    for topology in args.topologies.split(","):
        for pair in names:
            if (pair, topology) in done:
                continue
            r = run(args.method, pair, topology, args.programs)
            print(row(r), flush=True)
            if path:
                with path.open("a") as f:
                    f.write(json.dumps(r, default=str) + "\n")


if __name__ == "__main__":
    main()
