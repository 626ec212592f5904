"""Batch completion on top of `Sampler`: prompts in, completions out, in input order.

  complete_token_ids: prompts that are already token ids -> generated token ids
    (what a training loop's validation calls: it tokenises prompts as in training).
  generate_completions: prompt strings -> decoded completion strings (tokenises
    with the tokenizer's default special tokens, then `complete_token_ids`).

Prompts are batched in input order, left-padded to the smallest bucket (powers
of two up to the context) that fits the batch's longest prompt; the last batch
is padded with invalid rows, so one compile serves every batch of a bucket. A
prompt longer than the context allows is an error unless `max_prompt_length`
is given, in which case longer prompts are LEFT-truncated (the end of a prompt,
where an instruction template puts "### Response:", is kept) with a warning.
Batch i samples with `fold_in(key(seed), i)`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from classkd_jax.models import ModelConfig
from classkd_jax.sampling.processors import SamplingConfig
from classkd_jax.sampling.sampler import Sampler, bucket_length, default_buckets, left_pad
from classkd_jax.sharding import fetch

__all__ = ["PromptTooLongError", "complete_token_ids", "generate_completions"]

# `model` arguments are `(ModelConfig, params)` pairs, as `load_hf` returns them.
Model = tuple[ModelConfig, Any]


class PromptTooLongError(ValueError):
    """A prompt does not fit before the new tokens in the model's context.

    Attributes:
      index: the prompt's position in the input list.
      length: its number of tokens.
      limit: how many prompt tokens fit (context - max_new_tokens).
    """

    def __init__(self, index: int, length: int, limit: int):
        super().__init__(
            f"prompt {index} has {length} tokens, more than the {limit} that fit before "
            "the new tokens in the model's context; shorten it, lower max_new_tokens, or "
            "pass max_prompt_length to left-truncate"
        )
        self.index, self.length, self.limit = index, length, limit


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt, with the tokenizer's default special tokens."""
    ids = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}, expected a string")
        tokens = list(tokenizer(prompt)["input_ids"])
        if not prompt or not tokens:
            raise ValueError(f"prompt {i} is empty ({prompt!r}); every prompt needs text")
        ids.append(tokens)
    return ids


def _fit(
    token_ids: Sequence[Sequence[int]], limit: int, max_prompt_length: int | None
) -> list[list[int]]:
    """Left-truncates to `max_prompt_length` (with a warning); checks the `limit`."""
    out, truncated = [], []
    for i, tokens in enumerate(token_ids):
        tokens = list(tokens)
        if max_prompt_length is not None and len(tokens) > max_prompt_length:
            truncated.append((i, len(tokens)))
            tokens = tokens[-max_prompt_length:]
        if len(tokens) > limit:
            raise PromptTooLongError(i, len(tokens), limit)
        out.append(tokens)
    if truncated:
        shown = ", ".join(f"prompt {i} ({n} tokens)" for i, n in truncated[:5])
        warnings.warn(
            f"left-truncated {len(truncated)} prompt(s) to max_prompt_length="
            f"{max_prompt_length}: {shown}{' ...' if len(truncated) > 5 else ''}",
            stacklevel=4,
        )
    return out


def _tokenize(
    tokenizer, prompts: Sequence[str], limit: int, max_prompt_length: int | None
) -> list[list[int]]:
    """Token ids per prompt, left-truncated to `max_prompt_length` when given."""
    return _fit(_encode(tokenizer, prompts), limit, max_prompt_length)


def _as_token_lists(prompts: Sequence[Any], vocab_size: int) -> list[list[int]]:
    """Plain int lists from lists or 1-D integer arrays; each non-empty, in the vocabulary."""
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            raise TypeError(f"prompt {i} is a string; complete_token_ids takes token ids")
        ids = np.asarray(prompt)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(
                f"prompt {i} must be a 1-D sequence of integer token ids, got shape "
                f"{ids.shape} dtype {ids.dtype}"
            )
        if ids.size == 0:
            raise ValueError(f"prompt {i} has no tokens; every prompt needs at least one")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(
                f"prompt {i} has token ids outside the model's vocabulary [0, {vocab_size}): "
                f"min {int(ids.min())}, max {int(ids.max())}"
            )
        out.append(ids.astype(np.int64).tolist())
    return out


def _pad_id(tokenizer, config: ModelConfig) -> int:
    """The tokenizer's pad id, else the model's, else the first EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, config.pad_token_id, *config.eos_token_ids):
        if candidate is not None:
            return int(candidate)
    return 0


@functools.lru_cache(maxsize=4)
def _sampler(
    config: ModelConfig, mesh: jax.sharding.Mesh | None, decode_layout: str = "tensor"
) -> Sampler:
    # Reusing the Sampler reuses its compiled programs across calls (the
    # evaluation calls once per chunk and seed); like jit's cache, bounded.
    return Sampler(config, mesh=mesh, decode_layout=decode_layout)


def complete_token_ids(
    model: Model,
    prompts: Sequence[Sequence[int] | np.ndarray],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    pad_id: int,
    eos_ids: int | Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    prompt_buckets: Sequence[int] | None = None,
    max_prompt_length: int | None = None,
    decode_layout: str = "tensor",
) -> list[list[int]]:
    """Completes prompts given as token ids; returns each prompt's generated token ids.

    The batching, bucketing, sharding and seeding are `generate_completions`'s
    (which tokenises and calls this), so the same ids give the same tokens.

    Example (a training loop's validation, prompts tokenised as in training):
      new_ids = complete_token_ids((config, state.params), prompt_ids,
                                   max_new_tokens=64, pad_id=tokenizer.pad_token_id,
                                   seed=step, mesh=mesh)
      texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)

    Args:
      model: `(ModelConfig, params)`, e.g. from `classkd_jax.models.load_hf`.
      prompts: N prompts, each a list or 1-D integer numpy array of L_i >= 1
        token ids in [0, vocab_size) (ragged: lengths may differ). Used as
        given: no BOS or other special token is added.
      max_new_tokens: the generation budget T per prompt, in [1, context - 1].
      greedy, temperature, top_k, top_p, no_repeat_ngram_size: see
        `classkd_jax.sampling.SamplingConfig` (top_k=0 / top_p=1 are off).
      seed: batch i samples with `fold_in(key(seed), i)`; unused when greedy.
      batch_size: prompts per sampler call B (the last batch is padded, so one
        compile serves all batches of a bucket); rounded up to a multiple of
        the mesh's data shards.
      pad_id: id of the left padding and of the slots after a row's EOS.
      eos_ids: id(s) that end a row; None: the model config's `eos_token_ids`;
        () never stops early.
      mesh: run sharded on this mesh: batch over its data axes, params placed
        by `classkd_jax.sharding.DEFAULT_RULES`; None: the default device. A
        mesh may span several processes (`jax.distributed`): then every process
        calls this with the same prompts and params and gets every result back.
      prompt_buckets: static prompt lengths P to pad to; default powers of two
        from 16 up to the limit (context - T, or max_prompt_length if smaller).
      max_prompt_length: left-truncate longer prompts (with a warning); also
        the largest prompt bucket. None: over-long prompts are an error.
      decode_layout: where the weights live while decoding on `mesh`
        (`classkd_jax.sharding.decode_rules`).

    Returns:
      N lists, in prompt order: the tokens generated for each prompt (0 .. T
      ids; the EOS included when one was generated, nothing after it).

    Raises:
      ValueError: naming the value for max_new_tokens beyond the context, an
        empty prompt or ids outside the vocabulary, a prompt longer than the
        largest bucket, or (`PromptTooLongError`) one that does not fit the
        context.
      TypeError: for a prompt that is not a 1-D sequence of integers.
    """
    config, params = model
    context = config.max_position_embeddings
    if not 1 <= max_new_tokens < context:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} must be in [1, {context - 1}]: the model's "
            f"context (max_position_embeddings) is {context} tokens, prompt included"
        )
    limit = context - max_new_tokens
    bucket_limit = limit if max_prompt_length is None else min(limit, max_prompt_length)
    buckets = tuple(prompt_buckets) if prompt_buckets else default_buckets(bucket_limit)
    token_ids = _fit(_as_token_lists(prompts, config.vocab_size), limit, max_prompt_length)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        no_repeat_ngram_size=no_repeat_ngram_size,
        eos_ids=config.eos_token_ids if eos_ids is None else eos_ids,
        pad_id=pad_id,
    )
    sampler = _sampler(config, mesh, decode_layout)
    shards = sampler.batch_shards
    batch_size = -(-batch_size // shards) * shards
    key = jax.random.key(seed)
    generated: list[list[int]] = []
    for i, start in enumerate(range(0, len(token_ids), batch_size)):
        chunk = token_ids[start : start + batch_size]
        length = bucket_length(max(len(t) for t in chunk), buckets)
        tokens, mask, row_valid = left_pad(chunk, length, pad_id, batch_size)
        out = sampler(params, tokens, mask, jax.random.fold_in(key, i), cfg, row_valid=row_valid)
        out_tokens, out_mask = fetch((out.tokens, out.mask))
        for row in range(len(chunk)):
            generated.append(np.asarray(out_tokens[row][out_mask[row]]).tolist())
    return generated


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
      model: `(ModelConfig, params)`, e.g. from
        `classkd_jax.generate.load_model_and_tokenizer` or `load_hf`. The
        config's `eos_token_id` (int or tuple) ends a row.
      tokenizer: a transformers tokenizer; prompts get its default special
        tokens, completions are decoded with special tokens skipped. Its pad
        id pads (else the model's pad id, else the first EOS, else 0).
      prompts: N non-empty strings.
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
      N completion strings, in prompt order.

    Raises:
      ValueError: naming the value for an empty prompt, a prompt longer than
        the largest bucket or (`PromptTooLongError`) the context, or
        max_new_tokens beyond the context.
    """
    config, _ = model
    context = config.max_position_embeddings
    if not 1 <= max_new_tokens < context:  # before tokenising: the cheap check first
        raise ValueError(
            f"max_new_tokens={max_new_tokens} must be in [1, {context - 1}]: the model's "
            f"context (max_position_embeddings) is {context} tokens, prompt included"
        )
    generated = complete_token_ids(
        model,
        _encode(tokenizer, prompts),
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        no_repeat_ngram_size=no_repeat_ngram_size,
        seed=seed,
        batch_size=batch_size,
        pad_id=_pad_id(tokenizer, config),
        mesh=mesh,
        prompt_buckets=prompt_buckets,
        max_prompt_length=max_prompt_length,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
