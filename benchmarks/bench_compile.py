r"""Compile every pair config for the slices the README names; markdown tables of
per-device GiB and of the compile report's cost estimates.

    python benchmarks/bench_compile.py [--pairs all] [--topologies v5e:4x4,h100:8] \
        [--method classkd] [--jsonl out.jsonl] [--programs largest] [--config.KEY=VALUE ...]

Runs `python -m classkd_jax.compile` once per (pair, topology), one at a time
(each run compiles its programs in parallel worker processes; a large compile
takes 30-95 s and ~3 GB of host memory), with the pair's defaults from
`configs/_base.py` and the `--config.KEY=VALUE` overrides given here (e.g.
`--config.sampling.decode_layout=train` for the layout before issue 28), by
default the largest bucket of each program (the train steps, the sampler,
validation), and prints a row per run as it finishes: the largest program, its
per-device total, the device's memory, the verdict, the train step's estimated
MFU, the sampler's estimated ms per generated token and the bytes its decode
step moves through collectives, the wall time. `--jsonl` appends each run's
record (resumable: runs already in the file with the same overrides are
skipped); `--table` prints the file's runs as two pivot tables (GiB; ms per
token). Needs the `compile` extra.
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


def command(
    method: str, pair: str, topology: str, programs: str, out: Path, overrides=()
) -> list[str]:
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
        *overrides,
        "--out",
        str(out),
    ]


def run(method: str, pair: str, topology: str, programs: str, overrides=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compile.json"
        cmd = command(method, pair, topology, programs, out, overrides)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        shown = " ".join(cmd[2:4] + [c for c in cmd[4:] if not c.startswith(tmp)][:-1])
        record = {"pair": pair, "topology": topology, "status": proc.returncode, "wall_s": wall}
        record["overrides"] = list(overrides)
        record["command"] = f"python -m {shown}"
        if out.exists():
            record.update(json.loads(out.read_text()))
        else:
            record["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
        record.pop("config", None)
        return record


HEAD = (
    "| pair | topology | largest program | GiB per device / HBM | verdict | step MFU (est.) "
    "| sampler ms/token (est.) | decode-step collectives MiB | wall |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def costs(r: dict) -> dict:
    """The run's headline estimates: the largest train step's MFU, and the sampler
    (the largest `sampler` program, else any decode program) per token."""
    rows = [p for p in r.get("programs", []) if "est_s" in p]
    steps = [p for p in rows if p["kind"] == "step"]
    samplers = [p for p in rows if "est_ms_per_token" in p]
    samplers.sort(key=lambda p: (p["kind"] == "sampler", p["flops"]))
    out = {}
    if steps:
        out["mfu"] = max(steps, key=lambda p: p["flops"])["est_mfu"]
    if samplers:
        s = samplers[-1]
        out.update(
            sampler=s["program"],
            ms_per_token=s["est_ms_per_token"],
            token_binds=s["est_token_binds"],
            step_collective_mib=s["step_collective_bytes"] / 2**20,
        )
    return out


def row(r: dict) -> str:
    if "programs" not in r:
        return (
            f"| {r['pair']} | {r['topology']} | - | - | error: {r.get('error', '')} | - | - | - "
            f"| {r['wall_s']:.0f} s |"
        )
    worst = max(r["programs"], key=lambda p: p.get("total", float("inf")))
    total = "OOM" if "total" not in worst else f"{worst['total'] / GIB:.2f}"
    verdict = "fits" if r["fits"] else "**does not fit**"
    c = costs(r)
    mfu = f"{100 * c['mfu']:.0f}%" if "mfu" in c else "-"
    token = f"{c['ms_per_token']:.3g} ({c['token_binds']})" if "ms_per_token" in c else "-"
    comm = f"{c['step_collective_mib']:.1f}" if "step_collective_mib" in c else "-"
    return (
        f"| {r['pair']} | {r['topology']} | {worst['program']} | {total} / "
        f"{r['device_memory'] / GIB:.2f} | {verdict} | {mfu} | {token} | {comm} "
        f"| {r['wall_s']:.0f} s |"
    )


def pivot_tokens(records: list[dict]) -> str:
    """One row per pair (and overrides), one column per topology: the sampler's
    estimated ms per generated token, and MiB its decode step moves."""
    tops = list(dict.fromkeys(r["topology"] for r in records))
    keys = list(dict.fromkeys(_key(r)[::2] for r in records))
    by = {(r["pair"], r["topology"], " ".join(r.get("overrides", []))): r for r in records}
    lines = [
        "| pair | overrides | " + " | ".join(tops) + " |",
        "|---|---|" + "---|" * len(tops),
    ]
    for pair, overrides in keys:
        cells = []
        for t in tops:
            c = costs(by.get((pair, t, overrides), {}))
            cells.append(
                f"{c['ms_per_token']:.3g} ms ({c['step_collective_mib']:.0f} MiB)"
                if "ms_per_token" in c
                else "-"
            )
        lines.append(f"| {pair} | {overrides or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _key(r: dict) -> tuple[str, str, str]:
    return r["pair"], r["topology"], " ".join(r.get("overrides", []))


def pivot(records: list[dict]) -> str:
    """One row per pair, one column per topology: per-device GiB of the largest
    program (of the device's memory), and the smallest v5e slice that fits."""
    tops = list(dict.fromkeys(r["topology"] for r in records))
    names = list(dict.fromkeys(r["pair"] for r in records))
    by = {(r["pair"], r["topology"]): r for r in records if not r.get("overrides")}
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
    parser.add_argument("--programs", default="largest")
    parser.add_argument("--jsonl", default="")
    parser.add_argument("--table", action="store_true", help="print the --jsonl runs as tables")
    args, overrides = parser.parse_known_args()
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (only --config.KEY=VALUE passes on)")
    if args.table:
        records = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines()]
        print(pivot(records))
        print()
        print(pivot_tokens(records))
        return
    names = pairs() if args.pairs == "all" else args.pairs.split(",")
    done = set()
    path = Path(args.jsonl) if args.jsonl else None
    print(HEAD)
    if path and path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add(_key(r))
            print(row(r), flush=True)
    for topology in args.topologies.split(","):
        for pair in names:
            if (pair, topology, " ".join(overrides)) in done:
                continue
            r = run(args.method, pair, topology, args.programs, overrides)
            print(row(r), flush=True)
            if path:
                with path.open("a") as f:
                    f.write(json.dumps(r, default=str) + "\n")


if __name__ == "__main__":
    main()
