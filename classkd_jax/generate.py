"""Generate completions for prompts with the jitted sampler: a library function and a CLI.

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

Prompts are batched in input order, left-padded to the smallest bucket (powers
of two up to the context) that fits the batch's longest prompt. A prompt longer
than the context allows is an error unless `max_prompt_length` is given, in
which case longer prompts are LEFT-truncated (the end of a prompt, where an
instruction template puts "### Response:", is kept) with a warning.

On several hosts, start one process per host with the same arguments plus the
`classkd_jax.distributed` flags (`--distributed`, or `--coordinator_address`,
`--num_processes`, `--process_id`): the batch is split over every host's
devices and process 0 writes `out.jsonl`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from classkd_jax import distributed
from classkd_jax.models import ModelConfig, load_hf, load_tokenizer
from classkd_jax.sampling import (
    Sampler,
    SamplingConfig,
    bucket_length,
    default_buckets,
    left_pad,
)
from classkd_jax.sharding import fetch, make_mesh

logger = logging.getLogger(__name__)

# `model` arguments are `(ModelConfig, params)` pairs, as `load_hf` returns them.
Model = tuple[ModelConfig, Any]


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


def _tokenize(
    tokenizer, prompts: Sequence[str], limit: int, max_prompt_length: int | None
) -> list[list[int]]:
    """Token ids per prompt, left-truncated to `max_prompt_length` when given."""
    ids, truncated = [], []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}, expected a string")
        tokens = list(tokenizer(prompt)["input_ids"])
        if not prompt or not tokens:
            raise ValueError(f"prompt {i} is empty ({prompt!r}); every prompt needs text")
        if max_prompt_length is not None and len(tokens) > max_prompt_length:
            truncated.append((i, len(tokens)))
            tokens = tokens[-max_prompt_length:]
        if len(tokens) > limit:
            raise ValueError(
                f"prompt {i} has {len(tokens)} tokens, more than the {limit} that fit before "
                "the new tokens in the model's context; shorten it, lower max_new_tokens, or "
                "pass max_prompt_length to left-truncate"
            )
        ids.append(tokens)
    if truncated:
        shown = ", ".join(f"prompt {i} ({n} tokens)" for i, n in truncated[:5])
        warnings.warn(
            f"left-truncated {len(truncated)} prompt(s) to max_prompt_length="
            f"{max_prompt_length}: {shown}{' ...' if len(truncated) > 5 else ''}",
            stacklevel=3,
        )
    return ids


@functools.lru_cache(maxsize=4)
def _sampler(config: ModelConfig, mesh: jax.sharding.Mesh | None) -> Sampler:
    # Reusing the Sampler reuses its compiled programs across calls (the
    # evaluation calls once per chunk and seed); like jit's cache, bounded.
    return Sampler(config, mesh=mesh)


def generate_completions(
    model: Model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    prompt_buckets: Sequence[int] | None = None,
) -> list[str]:
    """Completes each prompt with the jitted sampler; returns the decoded completions.

    Args:
      model: `(ModelConfig, params)`, e.g. from `load_model_and_tokenizer` or
        `load_hf`. The config's `eos_token_id` (int or tuple) ends a row.
      tokenizer: a transformers tokenizer; prompts get its default special
        tokens, completions are decoded with special tokens skipped.
      prompts: non-empty strings.
      max_new_tokens: the generation budget per prompt.
      greedy, temperature, top_k, top_p, no_repeat_ngram_size: see
        `classkd_jax.sampling.SamplingConfig` (top_k=0 / top_p=1 are off).
      seed: batch i samples with `fold_in(key(seed), i)`; unused when greedy.
      batch_size: prompts per sampler call (the last batch is padded, so one
        compile serves all batches of a bucket); rounded up to a multiple of
        the mesh's data shards.
      max_prompt_length: left-truncate longer prompts (with a warning); also
        the largest prompt bucket. None: over-long prompts are an error.
      mesh: run sharded on this mesh: batch over its data axes, params
        placed by `classkd_jax.sharding.DEFAULT_RULES`; None: the default
        device. A mesh may span several processes (`jax.distributed`): then
        every process calls this with the same prompts and params and gets
        every completion back.
      prompt_buckets: static prompt lengths to pad to; default powers of two
        from 16 up to the limit.

    Returns:
      One completion string per prompt, in order.

    Raises:
      ValueError: naming the value for an empty prompt, a prompt longer than
        the largest bucket or the context, or max_new_tokens beyond the context.
    """
    config, params = model
    context = config.max_position_embeddings
    if not 1 <= max_new_tokens < context:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} must be in [1, {context - 1}]: the model's "
            f"context (max_position_embeddings) is {context} tokens, prompt included"
        )
    limit = context - max_new_tokens
    if max_prompt_length is not None:
        limit = min(limit, max_prompt_length)
    buckets = tuple(prompt_buckets) if prompt_buckets else default_buckets(limit)
    token_ids = _tokenize(tokenizer, prompts, context - max_new_tokens, max_prompt_length)
    pad_id = _pad_id(tokenizer, config)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        no_repeat_ngram_size=no_repeat_ngram_size,
        eos_ids=config.eos_token_ids,
        pad_id=pad_id,
    )
    sampler = _sampler(config, mesh)
    shards = sampler.batch_shards
    batch_size = -(-batch_size // shards) * shards
    key = jax.random.key(seed)
    completions = []
    for i, start in enumerate(range(0, len(token_ids), batch_size)):
        chunk = token_ids[start : start + batch_size]
        length = bucket_length(max(len(t) for t in chunk), buckets)
        tokens, mask, row_valid = left_pad(chunk, length, pad_id, batch_size)
        out = sampler(params, tokens, mask, jax.random.fold_in(key, i), cfg, row_valid=row_valid)
        out_tokens, out_mask = fetch((out.tokens, out.mask))
        for row in range(len(chunk)):
            ids = np.asarray(out_tokens[row][out_mask[row]]).tolist()
            completions.append(tokenizer.decode(ids, skip_special_tokens=True))
    return completions


def _pad_id(tokenizer, config: ModelConfig) -> int:
    """The tokenizer's pad id, else the model's, else the first EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, config.pad_token_id, *config.eos_token_ids):
        if candidate is not None:
            return int(candidate)
    return 0


def read_prompts(path: str | Path) -> list[dict]:
    """Reads a JSONL file of objects with a `prompt` string.

    Raises:
      ValueError: naming the file and line of bad JSON or a missing/non-string prompt.
    """
    from classkd_jax.data.sources import read_jsonl

    records = []
    for line_no, record in read_jsonl(path):
        if not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{line_no}: expected an object with a 'prompt' string")
        records.append(record)
    return records


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m classkd_jax.generate",
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
    args = parse_args(argv)
    distributed.initialize(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)  # ours only: JAX's INFO start-up lines are noise here
    records = read_prompts(args.prompts)
    model, tokenizer = load_model_and_tokenizer(
        args.model, dtype=args.dtype, role=args.role, tokenizer=args.tokenizer
    )
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
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, TypeError) as e:  # bad input: one clear line
        sys.exit(f"error: {e}")
