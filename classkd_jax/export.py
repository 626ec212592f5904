r"""Export a trained model of a run as a Hugging Face directory.

    python -m classkd_jax.export --workdir DIR --out HF_DIR [--which best|latest] \
        [--role student|classmate] [--step N]

`--which latest` (default) reads `DIR/checkpoints` (its newest step that
reads, after one line per damaged newer step; or `--step`), `--which best`
reads `DIR/best` (the step with the best validation metric). The directory
gets config.json, generation_config.json, *.safetensors and the run's
tokenizer: `transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` loads
it and `python -m classkd_jax.generate --model HF_DIR` samples from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from classkd_jax.cli import UserError

PROG = "python -m classkd_jax.export"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description="Export a run's model to Hugging Face format."
    )
    p.add_argument(
        "--workdir", required=True, help="the run's directory (python -m classkd_jax.train)"
    )
    p.add_argument("--out", required=True, help="the Hugging Face directory to write")
    p.add_argument("--which", choices=("latest", "best"), default="latest")
    p.add_argument("--role", default="student", help="student (default) or classmate")
    p.add_argument("--step", type=int, default=None, help="a checkpoint step instead of the newest")
    return p.parse_args(argv)


def export(workdir: Path, out: Path, *, which: str, role: str, step: int | None) -> Path:
    """Writes `role` of the chosen checkpoint to `out`; returns `out`."""
    from classkd_jax import checkpoint
    from classkd_jax.models import load_tokenizer, save_hf

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such directory")
    root = workdir / ("best" if which == "best" else "checkpoints")
    steps = checkpoint.all_steps(root)
    if not steps:
        hint = " (validation is off: eval_every=0)" if which == "best" else ""
        raise UserError(f"{root} holds no checkpoint{hint}; nothing to export")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: {root} has steps {steps}")
    try:  # the newest step that reads (one line per damaged newer one), or --step
        config, params, meta, chosen = checkpoint.load_newest_model(
            root, role, step=step, say=lambda line: print(f"{PROG}: {line}", file=sys.stderr)
        )
    except KeyError as e:
        if "has no model" not in str(e):
            raise
        held = sorted(checkpoint.read_meta(root, step).get("models", {}))
        raise UserError(f"--role {role}: the checkpoint holds {held}") from None
    tokenizer = meta.get("tokenizer")
    tok = load_tokenizer(tokenizer) if tokenizer and Path(tokenizer).is_dir() else None
    save_hf(out, config, params, tok)
    (Path(out) / "EXPORTED_FROM.json").write_text(
        json.dumps({"step": chosen, "which": which, "role": role, "workdir": str(workdir)}) + "\n"
    )
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = export(
        Path(args.workdir), Path(args.out), which=args.which, role=args.role, step=args.step
    )
    print(f"exported the {args.role} ({args.which}) to {out}")
    return 0


if __name__ == "__main__":
    from classkd_jax import cli

    sys.exit(cli.run(main, prog=PROG))
