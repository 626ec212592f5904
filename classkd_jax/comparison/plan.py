"""What a comparison runs: one training run per (table row, seed).

    specs = plan_runs("configs/demo.py", ["sft", "classkd"], seeds=[0, 1],
                      sweeps=[("misfeedback.weight", ["0", "0.1"])], overrides=[],
                      workdir=Path("runs/cmp"))

A row is a method (or a sampling baseline's `M+mf` twin: `mf_flags`), or
one with one value of each swept key. Every run of
a seed gets the same `seed` and `data.seed` whatever its method, so methods
see the same batches and the same initial weights; the token budget is the
config's (`steps` x `data.batch_size`), identical across methods. A run is
`python -m classkd_jax.train` with a `--config` and `--config.key=value`
flags, so what `compare` trains is exactly what that command line trains.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

from classkd_jax.cli import UserError

METHODS = ("sft", "kd", "seqkd", "gkd", "minillm", "distillm", "classkd")
# `M+mf`: method M with ClassKD's misfeedback term and classmate (`mf_flags`).
MF, MF_METHODS = "+mf", ("gkd", "minillm", "distillm")
# Keys compare sets itself, per run.
OWNED = ("seed", "data.seed")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a comparison.

    Attributes:
      row: its row in the table ('classkd', 'gkd+mf', or 'classkd misfeedback.weight=0.1').
      method: the method (a `+mf` row's base method: 'gkd').
      sweep: the swept (key, value) pairs of its row.
      seed: `seed` and `data.seed` of the run.
      argv: the `python -m classkd_jax.train` arguments that make it.
      workdir: its train workdir (`DIR/runs/<row>/seed<k>`).
    """

    row: str
    method: str
    sweep: tuple[tuple[str, str], ...]
    seed: int
    argv: tuple[str, ...]
    workdir: Path


def method_config(config: str, method: str) -> str:
    """The `--config` value that trains `method`.

    `configs/<m>.py[:variant]` (a method's own file) becomes the same variant of
    `configs/<method>.py`; any other file (e.g. configs/demo.py) gets
    `method=<method>` in its argument.
    """
    path, _, arg = config.partition(":")
    if Path(path).stem in METHODS:
        return str(Path(path).with_name(f"{method}.py")) + (f":{arg}" if arg else "")
    items = [i for i in arg.split(",") if i.strip() and not i.strip().startswith("method=")]
    return f"{path}:" + ",".join([f"method={method}", *items])


def split_name(name: str) -> tuple[str, bool]:
    """'gkd+mf' -> ('gkd', True); 'gkd' -> ('gkd', False)."""
    return (name[: -len(MF)], True) if name.endswith(MF) else (name, False)


def parse_methods(text: str) -> list[str]:
    """Methods and `M+mf` twins, each twin moved right after its base when both are listed."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if split_name(m)[0] not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {text!r}: unknown {unknown or 'none given'}; known {METHODS}")
    no_mf = [m for m in methods if split_name(m)[1] and split_name(m)[0] not in MF_METHODS]
    if no_mf:
        raise UserError(
            f"--methods {text!r}: {no_mf[0]} has no misfeedback variant; "
            f"{MF} is for the methods that sample from the student, {MF_METHODS}"
        )
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods {text!r}: a method is listed twice")
    twins = [m for m in methods if split_name(m)[1] and split_name(m)[0] in methods]
    out = []
    for m in methods:
        if m not in twins:
            out += [m] + ([m + MF] if m + MF in twins else [])
    return out


def mf_flags(config: str, method: str) -> list[str]:
    """The overrides that give `method`'s config ClassKD's misfeedback and classmate
    sections: every key of those sections where the config's ClassKD variant
    differs from the method's (on configs/<m>.py, `misfeedback.weight=0.1`; on
    configs/demo.py also the demo's ClassKD classmate pace)."""
    from classkd_jax.config_utils import load_config
    from classkd_jax.training import checks

    classkd = load_config(method_config(config, "classkd"))
    own = load_config(method_config(config, method))
    flags = []
    for section in ("misfeedback", "classmate"):
        for key in checks.changed_keys(classkd[section], own[section], section):
            flags.append(f"--config.{key}={checks.config_value(classkd, key)}")
    return flags


def parse_seeds(text: str) -> list[int]:
    """`3` -> [0, 1, 2]; `0,5,7` -> [0, 5, 7]."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--seeds {text!r}: expected a count (3) or comma-separated seeds (0,1,2)"
        ) from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds {text!r}: seeds must be distinct")
    return seeds


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """`misfeedback.weight=0,0.1,0.3` -> ('misfeedback.weight', ['0', '0.1', '0.3'])."""
    key, sep, values = text.partition("=")
    key = key.strip().removeprefix("config.")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not items:
        raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,... (e.g. misfeedback.weight=0,0.1)")
    if key in OWNED:
        raise UserError(f"--sweep {text!r}: compare sets {key} per run; use --seeds")
    if len(set(items)) != len(items):
        raise UserError(f"--sweep {text!r}: a value is listed twice")
    return key, items


def check_overrides(overrides: Sequence[str]) -> None:
    for flag in overrides:
        if not flag.startswith("--config."):
            raise UserError(
                f"unexpected argument {flag!r}; config overrides are --config.KEY=VALUE"
            )
        key = flag[len("--config.") :].split("=", 1)[0]
        if key in OWNED:
            raise UserError(f"{flag}: compare sets {key} per run (from --seeds)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def plan_runs(
    config: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    sweeps: Sequence[tuple[str, list[str]]],
    overrides: Sequence[str],
    workdir: Path,
    cached_methods: Sequence[str] = (),
) -> list[RunSpec]:
    """Every run of the comparison, rows in `methods` order then sweep order, seeds inner.

    `cached_methods` read their dataset rows' teacher from one shared cache
    (`--config.teacher.cache=auto`, `execute.teacher_cache_dir`). SeqKD's
    teacher answers are shared by all its runs (`DIR/seqkd_cache`: they
    depend on the teacher and `seqkd.seed`, not on the run's seed), and so is
    XLA's compilation cache (`DIR/compile_cache`), unless an override sets them.
    """
    check_overrides(overrides)
    path, sep, arg = config.partition(":")
    config = str(Path(path).resolve()) + sep + arg  # a run's argv names one file, however given
    given = {flag[len("--config.") :].split("=", 1)[0] for flag in overrides}
    shared = []
    if "compilation_cache" not in given:
        shared.append(f"--config.compilation_cache={workdir / 'compile_cache'}")
    grid = list(itertools.product(*[[(k, v) for v in values] for k, values in sweeps]))
    specs = []
    for name in methods:
        method, mf = split_name(name)
        extra = list(shared) + (mf_flags(config, method) if mf else [])
        if method == "seqkd" and "seqkd.cache_dir" not in given:
            extra.append(f"--config.seqkd.cache_dir={workdir / 'seqkd_cache'}")
        cached = method in cached_methods and not mf and "teacher.cache" not in given
        if cached:  # resolved by `execute.teacher_cache_dir`: one cache per teacher, data, settings
            extra.append("--config.teacher.cache=auto")
        # teacher_cache.* overrides reach the rows that read a cache (elsewhere: refused)
        own = [o for o in overrides if cached or not o.startswith("--config.teacher_cache.")]
        for combo in grid:
            row = " ".join([name, *(f"{k}={v}" for k, v in combo)])
            for seed in seeds:
                run_dir = workdir / "runs" / _slug(row.replace(" ", "__")) / f"seed{seed}"
                argv = (
                    "--config",
                    method_config(config, method),
                    "--workdir",
                    str(run_dir),
                    *own,
                    *extra,
                    *(f"--config.{k}={v}" for k, v in combo),
                    f"--config.seed={seed}",
                    f"--config.data.seed={seed}",
                )
                specs.append(RunSpec(row, method, tuple(combo), seed, argv, run_dir))
    return specs
