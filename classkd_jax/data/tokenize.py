"""Tokenisation of instruction examples through a `transformers` tokenizer.

Prompt and response are encoded separately and concatenated, so the prompt
tokens of a training sequence are exactly the tokens the sampler is given for
the same prompt (MiniLLM encodes prompt+response together and slices, which
differs only where a BPE merge crosses the boundary; our templates end in a
newline, where byte-level BPE never merges). The response gets EOS appended.

Limits follow the protocol: prompts over `max_prompt_length` tokens are dropped
(or, with `long_prompts='truncate'`, cut from the left so the '### Response:'
cue survives); a prompt+response over `max_length` keeps its prompt and cuts
the response (losing its EOS, so the model is not taught to stop there).
Everything dropped or cut is counted in `TokenizeStats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from classkd_jax.data import templates
from classkd_jax.data.sources import Example


@dataclasses.dataclass
class TokenizeStats:
    """Counts of what tokenisation dropped or cut."""

    examples: int = 0
    kept: int = 0
    long_prompt_dropped: int = 0
    long_prompt_truncated: int = 0
    response_truncated: int = 0
    documents_split: int = 0
    empty_response_dropped: int = 0  # by the source, before tokenisation (filled by callers)

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.examples} examples kept ({self.empty_response_dropped} "
            "with an empty response dropped before); prompts over the limit: "
            f"{self.long_prompt_dropped} dropped, {self.long_prompt_truncated} truncated; "
            f"{self.response_truncated} responses truncated to max_length"
        )


@dataclasses.dataclass
class TokenizedData:
    """Token ids of a dataset, one entry per kept example.

    Attributes:
      prompts: prompt ids, each `[P_i] int32` (BOS first when requested).
      responses: response ids incl. the final EOS, each `[R_i] int32`
        (R_i = 0 for prompt-only data).
      source_index: index of each kept example in the input list.
      pad_id: the id used for padding.
      stats: what was dropped or cut.
    """

    prompts: list[np.ndarray]
    responses: list[np.ndarray]
    source_index: np.ndarray
    pad_id: int
    stats: TokenizeStats

    def __len__(self) -> int:
        return len(self.prompts)

    def lengths(self) -> np.ndarray:
        """Total length of each example, `[N] int64`."""
        return np.array(
            [len(p) + len(r) for p, r in zip(self.prompts, self.responses, strict=True)]
        )


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(eos_id, pad_id); pad falls back to EOS as in MiniLLM's GPT-2 set-up."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id; set eos_token")
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _bos(tokenizer: Any, add_bos: bool) -> list[int]:
    if not add_bos:
        return []
    if tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    return [int(tokenizer.bos_token_id)]


def _fit_prompt(
    ids: list[int], max_prompt_length: int, long_prompts: str, stats, bos: list[int] = ()
) -> list[int] | None:
    """`bos + ids` within `max_prompt_length`, cut from the left after the BOS
    (which a model that takes one needs first), or None when dropped."""
    bos = list(bos)
    if len(bos) + len(ids) <= max_prompt_length:
        return bos + ids
    if long_prompts == "drop":
        stats.long_prompt_dropped += 1
        return None
    stats.long_prompt_truncated += 1
    keep = max_prompt_length - len(bos)
    return bos + ids[len(ids) - keep :]


def tokenize_prompts(
    prompts: Sequence[str],
    tokenizer: Any,
    *,
    max_prompt_length: int = 256,
    add_bos: bool = False,
    long_prompts: str = "truncate",
) -> TokenizedData:
    """Tokenises already formatted prompts (e.g. `EvalExample.prompt`).

    Evaluation must score every example, so long prompts are truncated from
    the left by default rather than dropped.
    """
    if long_prompts not in ("drop", "truncate"):
        raise ValueError(f"long_prompts must be 'drop' or 'truncate', got {long_prompts!r}")
    _, pad = special_ids(tokenizer)
    stats = TokenizeStats(examples=len(prompts))
    bos = _bos(tokenizer, add_bos)
    kept_p, kept_i = [], []
    for i, ids in enumerate(_encode(tokenizer, prompts)):
        ids = _fit_prompt(list(ids), max_prompt_length, long_prompts, stats, bos)
        if ids is not None:
            kept_p.append(np.asarray(ids, np.int32))
            kept_i.append(i)
    stats.kept = len(kept_p)
    empty = [np.zeros((0,), np.int32)] * len(kept_p)
    return TokenizedData(kept_p, empty, np.asarray(kept_i, np.int64), pad, stats)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    template: str = "alpaca",
    max_prompt_length: int = 256,
    max_length: int = 512,
    add_bos: bool = False,
    long_prompts: str = "drop",
) -> TokenizedData:
    """Tokenises instruction examples into prompt and response ids.

    Args:
      examples: the examples; the first reference is the response.
      tokenizer: a `transformers` tokenizer (shared by teacher, student and
        classmate).
      template: a `templates.TEMPLATES` key.
      max_prompt_length: longest prompt kept (protocol: 256).
      max_length: longest prompt + response (protocol: 512).
      add_bos: prepend the tokenizer's BOS to the prompt.
      long_prompts: 'drop' (protocol) or 'truncate' (from the left).

    Returns:
      The tokenised examples and what was dropped or cut.
    """
    if long_prompts not in ("drop", "truncate"):
        raise ValueError(f"long_prompts must be 'drop' or 'truncate', got {long_prompts!r}")
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length < max_length, got {max_prompt_length}, {max_length}"
        )
    eos, pad = special_ids(tokenizer)
    stats = TokenizeStats(examples=len(examples))
    prompts = [templates.format_prompt(e.instruction, e.input, template) for e in examples]
    prompt_ids = _encode(tokenizer, prompts)
    response_ids = _encode(tokenizer, [e.response for e in examples])
    bos = _bos(tokenizer, add_bos)
    kept_p, kept_r, kept_i = [], [], []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        p = _fit_prompt(list(p), max_prompt_length, long_prompts, stats, bos)
        if p is None:
            continue
        r = list(r) + [eos]
        if len(p) + len(r) > max_length:
            stats.response_truncated += 1
            r = r[: max_length - len(p)]
        kept_p.append(np.asarray(p, np.int32))
        kept_r.append(np.asarray(r, np.int32))
        kept_i.append(i)
    stats.kept = len(kept_p)
    return TokenizedData(kept_p, kept_r, np.asarray(kept_i, np.int64), pad, stats)


def tokenize_texts(texts: Sequence[str], tokenizer: Any, *, max_length: int = 512) -> TokenizedData:
    """Plain text for a language-modelling loss (MiniLLM's pre-training term).

    Each document gets EOS appended and is cut into chunks of at most
    `max_length` tokens; every chunk is an example with an empty prompt, so
    all its tokens after the first are targets. Pack them (`pack=True`).
    """
    eos, pad = special_ids(tokenizer)
    stats = TokenizeStats(examples=len(texts))
    chunks, index = [], []
    for i, ids in enumerate(_encode(tokenizer, texts)):
        ids = list(ids) + [eos]
        for start in range(0, len(ids), max_length):
            chunks.append(np.asarray(ids[start : start + max_length], np.int32))
            index.append(i)
        if len(ids) > max_length:
            stats.documents_split += 1
    stats.kept = len(chunks)
    empty = [np.zeros((0,), np.int32)] * len(chunks)
    return TokenizedData(empty, chunks, np.asarray(index, np.int64), pad, stats)
