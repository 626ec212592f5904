"""Builds a teacher cache.

    python -m classkd_jax.teacher_cache --config configs/<method>.py[:ARG] --out DIR \\
        [--config.key=value ...]

Runs the config's teacher once over its training rows (and dev rows when it
validates) and writes the cache a run then reads with
`--config.teacher.cache=DIR` (docs/teacher_cache.md). On several processes
(the trainer's `--coordinator_address` / `--num_processes` / `--process_id`
flags) each writes its own chunks; rerunning a killed job finishes it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "python -m classkd_jax.teacher_cache"


def split_out(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(--out value, the other arguments)."""
    out, rest, it = None, [], iter(argv)
    for arg in it:
        if arg == "--out":
            out = next(it, None)
        elif arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return out, rest


def main(argv: Sequence[str] | None = None) -> int:
    from classkd_jax import distributed
    from classkd_jax.cli import UserError
    from classkd_jax.train import parse_flags
    from classkd_jax.training import logs

    argv = list(sys.argv[1:] if argv is None else argv)
    logs.quiet_libraries()
    out, rest = split_out(argv)
    if not out:
        raise UserError("--out DIR is required (where the cache is written)")
    multi, rest = distributed.split_flags(rest)
    config, _ = parse_flags(rest, workdir=False)
    if config.method not in ("kd", "distillm", "classkd"):
        raise UserError(
            f"method={config.method!r} trains on no fixed rows with a teacher; the cache "
            "serves kd, distillm and classkd configs"
        )
    try:
        if distributed.requested(multi):
            distributed.initialize(multi)
    except ValueError as e:
        raise UserError(str(e)) from None
    from classkd_jax.teacher_cache import builder

    result = builder.build(config, Path(out))
    print(
        f"{PROG}: {result['built']} chunk(s) written, {result['skipped']} already there; "
        + builder.describe(Path(out)),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    from classkd_jax import cli

    sys.exit(cli.run(main, prog=PROG))
