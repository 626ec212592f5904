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


def build_parser():
    """The command's own flags; the rest are the trainer's (`--config`, overrides)
    and the multi-process flags (`classkd_jax.distributed`)."""
    import argparse

    from classkd_jax import distributed

    p = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    p.add_argument("--out", default=None, help="the cache directory (written, or finished)")
    distributed.add_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from classkd_jax import distributed
    from classkd_jax.cli import UserError
    from classkd_jax.train import parse_flags
    from classkd_jax.training import logs

    argv = list(sys.argv[1:] if argv is None else argv)
    logs.quiet_libraries()
    multi, rest = build_parser().parse_known_args(argv)
    if not multi.out:
        raise UserError("--out DIR is required (where the cache is written)")
    out = multi.out
    config, _ = parse_flags(rest, workdir=False)
    from classkd_jax.training.checks import CACHE_METHODS

    if config.method not in CACHE_METHODS:
        raise UserError(
            f"method={config.method!r} trains on no fixed rows with a teacher; the cache "
            f"serves {', '.join(CACHE_METHODS)} configs"
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
