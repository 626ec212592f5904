"""Generate completions for the prompts of a JSONL file with the jitted sampler (a CLI).

  python -m classkd_jax.generate --model PATH --prompts prompts.jsonl --out out.jsonl \\
      [--greedy | --temperature T --top_p P --top_k K] [--max_new_tokens N] [--seed S]

PATH is a Hugging Face model directory (config.json + *.safetensors + tokenizer)
or a classkd-jax checkpoint (`classkd_jax.checkpoint`: a checkpoint root, whose
latest step is read, or one step's directory; `--role` picks the model, default
'student'; its tokenizer is the one the checkpoint names, or `--tokenizer`).
`prompts.jsonl` holds one
JSON object per line with a `prompt` string; `out.jsonl` gets the same objects
plus a `completion` string. Prompts are tokenized by the directory's tokenizer
with its default special tokens, completions decoded with special tokens
skipped, so `--greedy` reproduces transformers' `generate(do_sample=False)`.

Generation is `classkd_jax.sampling.generate_completions` (re-exported here):
prompts are batched in input order, left-padded to the smallest bucket (powers
of two up to the context) that fits the batch's longest prompt. A prompt longer
than the context allows is an error unless `--max_prompt_length` is given, in
which case longer prompts are LEFT-truncated (the end of a prompt, where an
instruction template puts "### Response:", is kept) with a warning.

Bad input (a missing --model path, a malformed prompts line, a prompt,
--max_new_tokens or --max_prompt_length + --max_new_tokens that does not fit
the model's context) is one line on stderr, `python -m classkd_jax.generate:
error: ...`, and exit status 2.

On several hosts, start one process per host with the same arguments plus the
`classkd_jax.distributed` flags (`--distributed`, or `--coordinator_address`,
`--num_processes`, `--process_id`): the batch is split over every host's
devices and process 0 writes `out.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from classkd_jax import cli, distributed, supervisor
from classkd_jax.models import load_hf, load_tokenizer
from classkd_jax.sampling.completions import (
    Model,
    PromptTooLongError,
    generate_completions,
)
from classkd_jax.sharding import make_mesh

__all__ = ["generate_completions", "load_model_and_tokenizer", "main", "read_prompts"]

PROG = "python -m classkd_jax.generate"
logger = logging.getLogger(__name__)


def load_model_and_tokenizer(
    path: str | Path,
    *,
    dtype: str | None = None,
    role: str = "student",
    tokenizer: str | Path | None = None,
) -> tuple[Model, Any]:
    """Loads a Hugging Face directory or a checkpoint as `((config, params), tokenizer)`.

    For a Hugging Face directory the EOS ids come from its generation_config.json
    when it has them (as transformers' `generate` does; Llama 3 lists several
    there), else from config.json.

    Args:
      path: a local Hugging Face model directory, or a classkd-jax checkpoint
        (root or step directory).
      dtype: compute dtype ('float32' default, or 'bfloat16').
      role: for a checkpoint, which model to load ('student', 'teacher', ...).
      tokenizer: a tokenizer directory to use instead of the model's own (for a
        checkpoint: instead of the one its metadata names).

    Raises:
      FileNotFoundError: naming `path` when it is neither, or naming the
        tokenizer a checkpoint points at when that is gone.
    """
    from classkd_jax import checkpoint

    path = Path(path).expanduser()
    if checkpoint.is_checkpoint(path):
        config, params, meta = checkpoint.load_model(path, role, dtype=dtype)
        tokenizer = tokenizer or meta.get("tokenizer")
        if tokenizer is None or not Path(tokenizer).expanduser().is_dir():
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} names tokenizer {tokenizer!r}, which is not a "
                "directory here; pass --tokenizer DIR"
            )
        return (config, params), load_tokenizer(Path(tokenizer).expanduser())
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise FileNotFoundError(
            f"model path {str(path)!r} is neither a Hugging Face model directory (no "
            "config.json there) nor a classkd-jax checkpoint (no <step>/meta there)"
        )
    config, params = load_hf(path, dtype=dtype)
    generation_file = path / "generation_config.json"
    if generation_file.is_file():
        eos = json.loads(generation_file.read_text()).get("eos_token_id")
        if eos is not None:
            config = config.replace(eos_token_id=eos)
    return (config, params), load_tokenizer(tokenizer or path)


def _read_prompt_lines(path: str | Path) -> tuple[list[int], list[dict]]:
    """(line numbers, records) of a prompts file; see `read_prompts`."""
    from classkd_jax.data.sources import read_jsonl

    lines, records = [], []
    for line_no, record in read_jsonl(path):
        if not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{line_no}: expected an object with a 'prompt' string")
        if not record["prompt"]:
            raise ValueError(f"{path}:{line_no}: the 'prompt' is empty; every prompt needs text")
        lines.append(line_no)
        records.append(record)
    return lines, records


def read_prompts(path: str | Path) -> list[dict]:
    """Reads a JSONL file of objects with a non-empty `prompt` string.

    Raises:
      FileNotFoundError: naming the path.
      ValueError: naming the file and line of bad JSON or a missing, non-string
        or empty prompt.
    """
    return _read_prompt_lines(path)[1]


def check_fits_context(
    context: int, max_new_tokens: int, max_prompt_length: int | None = None
) -> None:
    """Raises `cli.UserError` naming the flag to lower when the lengths exceed `context`."""
    if not 1 <= max_new_tokens < context:
        raise cli.UserError(
            f"--max_new_tokens {max_new_tokens} does not fit the model's context of {context} "
            f"tokens (max_position_embeddings, prompt included); use 1 .. {context - 1}"
        )
    if max_prompt_length is not None and max_prompt_length + max_new_tokens > context:
        raise cli.UserError(
            f"--max_prompt_length {max_prompt_length} + --max_new_tokens {max_new_tokens} "
            f"exceed the model's context of {context} tokens (max_position_embeddings); "
            "lower --max_new_tokens or --max_prompt_length so that they sum to at most "
            f"{context}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Complete the prompts of a JSONL file with a model (jitted JAX sampler).",
    )
    p.add_argument(
        "--model", required=True, help="a Hugging Face model directory or a classkd-jax checkpoint"
    )
    p.add_argument("--role", default="student", help="which model of a checkpoint (student)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--prompts", required=True, help="JSONL, one object with a 'prompt' per line")
    p.add_argument("--out", required=True, help="JSONL written: the objects plus 'completion'")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (1.0)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus mass, 1.0 = off")
    p.add_argument("--top_k", type=int, default=None, help="top-k, 0 = off")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_repeat_ngram_size", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument(
        "--max_prompt_length", type=int, default=None, help="left-truncate longer prompts"
    )
    p.add_argument("--dtype", default=None, help="compute dtype: float32 (default) or bfloat16")
    distributed.add_flags(p)
    args = p.parse_args(argv)
    sampling_flags = [f for f in ("temperature", "top_p", "top_k") if getattr(args, f) is not None]
    if args.greedy and sampling_flags:
        p.error(f"--greedy cannot be combined with --{', --'.join(sampling_flags)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # Several processes: a parent supervises the one that generates (a lost peer
    # is one line, exit 75), as for the trainer; logs beside --out.
    where = dict(
        logdir=Path(args.out).expanduser().absolute().parent,
        name="generate",
        rerun="rerun the command to generate again",
    )
    status = supervisor.run_command(argv, args, prog=PROG, module="classkd_jax.generate", **where)
    if status is not None:
        return status
    try:
        return _generate(args)
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        supervisor.collective_failed(error, prog=PROG, **where)


def _generate(args) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)  # ours only: JAX's INFO start-up lines are noise here
    lines, records = _read_prompt_lines(args.prompts)
    model, tokenizer = load_model_and_tokenizer(
        args.model, dtype=args.dtype, role=args.role, tokenizer=args.tokenizer
    )
    context = model[0].max_position_embeddings
    check_fits_context(context, args.max_new_tokens, args.max_prompt_length)
    mesh = None
    if jax.device_count() > 1:
        mesh = make_mesh(data=-1)
    logger.info(
        "%d prompts, model %s, %d device(s), batch %d",
        len(records),
        args.model,
        jax.device_count(),
        args.batch_size,
    )
    try:
        completions = generate_completions(
            model,
            tokenizer,
            [r["prompt"] for r in records],
            max_new_tokens=args.max_new_tokens,
            greedy=args.greedy,
            temperature=1.0 if args.temperature is None else args.temperature,
            top_k=args.top_k or 0,
            top_p=1.0 if args.top_p is None else args.top_p,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            seed=args.seed,
            batch_size=args.batch_size,
            max_prompt_length=args.max_prompt_length,
            mesh=mesh,
        )
    except PromptTooLongError as e:  # name the file's line and the flags, not the index
        raise cli.UserError(
            f"{args.prompts}:{lines[e.index]}: the prompt has {e.length} tokens; with "
            f"--max_new_tokens {args.max_new_tokens} only {e.limit} fit in the context of "
            f"{context}: lower it, or left-truncate with --max_prompt_length {e.limit}"
        ) from None
    if jax.process_index() != 0:  # every process holds every completion; one writes
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record, completion in zip(records, completions, strict=True):
            f.write(json.dumps({**record, "completion": completion}, ensure_ascii=False) + "\n")
    logger.info("wrote %d completions to %s", len(completions), out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
