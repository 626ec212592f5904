"""Alignment of two tokenizations of one text into chunks (host side, numpy).

A *chunk* is a stretch of bytes that both tokenizations cut at its two ends:
the tokens of each side that end inside it are the chunk's tokens on that
side. Both models then predict the same bytes given the same byte prefix, so
their log-likelihoods of the chunk (sum of the realised tokens' log-probs)
are comparable (ALM, Minixhofer et al. 2025), and where a chunk is one token
on each side their next-token distributions are too (GOLD's exact match).

Byte offsets come from the tokenizers' character offsets (fast tokenizers'
`offset_mapping`), converted to UTF-8 bytes. What a side may be cut at:
  - the end of a token, unless the next token overlaps it: byte-level BPE
    splits one multi-byte character into several tokens that all report
    that character's offsets, and no cut may fall inside the character;
  - anywhere in a gap no token covers (WordPiece and some SentencePiece
    set-ups leave the spaces between words out of every token's offsets),
    so 'hello| world' (byte BPE) and 'hello |world' (WordPiece) share a cut.
Zero-width tokens (BOS, added special tokens that report (0, 0)) join the
chunk of the next token of their side. A chunk holding tokens of one side
only (a whitespace token the other side drops) merges into the next. Tokens
past the last cut both sides share (one side truncated) belong to no chunk.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Alignment",
    "align_spans",
    "align_text",
    "byte_spans",
    "encode_with_spans",
    "refine_spans",
]


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Chunks of two tokenizations of one text.

    Attributes:
      a: `[N_a] int32` chunk id of each token of side a (-1: in no chunk).
      b: `[N_b] int32` the same for side b.
      num_chunks: K; ids run 0..K-1 in text order, each present on both sides.
      cuts: `[K + 1] int64` byte offsets of the chunk boundaries.
    """

    a: np.ndarray
    b: np.ndarray
    num_chunks: int
    cuts: np.ndarray


def byte_spans(text: str, char_offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Character offsets into `text` -> UTF-8 byte offsets, `[N, 2] int64`."""
    ends = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])
    spans = np.asarray(char_offsets, np.int64).reshape(-1, 2)
    return ends[spans]


def encode_with_spans(
    tokenizer, text: str, spelling: Sequence[bytes | None] | None = None
) -> tuple[list[int], np.ndarray]:
    """(ids, byte spans `[N, 2]`) of `text` through a fast tokenizer, no special tokens added.

    `spelling`: per id the bytes it spells (`vocab_map.token_bytes`), to place the
    cuts between tokens inside one multi-byte character (`refine_spans`).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    spans = byte_spans(text, enc["offset_mapping"])
    if spelling is not None:
        spans = refine_spans(spans, ids, spelling)
    return ids, spans


def refine_spans(spans: np.ndarray, ids: Sequence[int], spelling) -> np.ndarray:
    """Exact byte spans for runs of overlapping tokens (pieces of one character).

    Tokenizers report a character's offsets for every token holding some of
    its bytes (byte-level BPE, byte fallback). Where the run's tokens spell
    bytes whose lengths add up to the run's byte range, each token gets its own
    bytes; otherwise the run keeps its overlapping spans (no cut inside it).
    """
    spans = spans.copy()
    n, j = len(spans), 0
    while j < n:
        end = j + 1
        while end < n and spans[end, 0] < spans[end - 1, 1] and spans[end, 1] > spans[end, 0]:
            end += 1
        if end - j > 1:
            lengths = [len(spelling[i]) if spelling[i] is not None else -1 for i in ids[j:end]]
            lo, hi = spans[j, 0], spans[j:end, 1].max()
            if min(lengths) > 0 and sum(lengths) == hi - lo:
                starts = lo + np.cumsum([0] + lengths)
                spans[j:end, 0], spans[j:end, 1] = starts[:-1], starts[1:]
        j = end
    return spans


def _allowed_cuts(spans: np.ndarray, length: int) -> set[int]:
    """Byte positions in [0, length] where one side may be cut (module docstring)."""
    real = [(int(s), int(e)) for s, e in spans if e > s]
    if not real:
        return set(range(length + 1))
    out = set(range(0, real[0][0] + 1)) | set(range(real[-1][1], length + 1))
    for (_, end), (start, _) in zip(real[:-1], real[1:], strict=True):
        if end <= start:  # no overlap: not inside one multi-byte character
            out.update(range(end, start + 1))
    return out


def _raw_chunks(spans: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Per token the interval (cuts[i], cuts[i + 1]] its end lies in (-1: past the last
    cut); zero-width tokens take their next real token's interval."""
    out = np.full(len(spans), -1, np.int64)
    for j, (s, e) in enumerate(spans):
        if e > s and e <= cuts[-1]:
            out[j] = bisect.bisect_left(cuts, int(e)) - 1
    following = -1
    for j in range(len(spans) - 1, -1, -1):
        s, e = spans[j]
        if e > s:
            following = out[j]
        elif following >= 0:
            out[j] = following
    # Trailing zero-width tokens with no real token after them join the last interval
    # only if it ends at the text's end (e.g. nothing was truncated).
    return out


def _merge_one_sided(raw_a: np.ndarray, raw_b: np.ndarray, n_raw: int) -> np.ndarray:
    """Maps raw intervals to chunk ids so every chunk has tokens on both sides."""
    count_a = np.bincount(raw_a[raw_a >= 0], minlength=n_raw)
    count_b = np.bincount(raw_b[raw_b >= 0], minlength=n_raw)
    group = np.full(n_raw, -1, np.int64)
    current, has_a, has_b, open_ = 0, False, False, []
    for r in range(n_raw):
        open_.append(r)
        has_a, has_b = has_a or count_a[r] > 0, has_b or count_b[r] > 0
        if has_a and has_b:
            group[open_] = current
            current, has_a, has_b, open_ = current + 1, False, False, []
    if open_ and current > 0 and (has_a or has_b):  # one-sided tail: into the last chunk
        group[open_] = current - 1
    return group


def align_spans(spans_a: np.ndarray, spans_b: np.ndarray, length: int) -> Alignment:
    """Chunks of two tokenizations given each token's byte span in a `length`-byte text.

    Args:
      spans_a: `[N_a, 2]` byte (start, end) of side a's tokens, in order; a
        zero-width span is a special token.
      spans_b: `[N_b, 2]` the same for side b.
      length: the text's length in bytes.

    Returns:
      The `Alignment`: both sides' tokens in chunk `k` cover the bytes
      `cuts[k]..cuts[k + 1]` (up to the gaps no token covers).
    """
    spans_a = np.asarray(spans_a, np.int64).reshape(-1, 2)
    spans_b = np.asarray(spans_b, np.int64).reshape(-1, 2)
    if np.array_equal(spans_a, spans_b):  # one segmentation: token j is chunk j
        ids = np.arange(len(spans_a), dtype=np.int32)
        bounds = np.concatenate([spans_a[:1, 0], spans_a[:, 1]]) if len(ids) else np.zeros(1)
        return Alignment(ids, ids.copy(), len(ids), bounds)
    covered = min(_coverage(spans_a, length), _coverage(spans_b, length))
    shared = _allowed_cuts(spans_a, length) & _allowed_cuts(spans_b, length)
    cuts = sorted(c for c in shared if c <= covered)
    if len(cuts) < 2:
        return Alignment(
            np.full(len(spans_a), -1, np.int32), np.full(len(spans_b), -1, np.int32), 0, np.zeros(1)
        )
    raw_a, raw_b = _raw_chunks(spans_a, cuts), _raw_chunks(spans_b, cuts)
    group = _merge_one_sided(raw_a, raw_b, len(cuts) - 1)
    a = np.where(raw_a >= 0, group[np.maximum(raw_a, 0)], -1).astype(np.int32)
    b = np.where(raw_b >= 0, group[np.maximum(raw_b, 0)], -1).astype(np.int32)
    k = int(max(a.max(initial=-1), b.max(initial=-1)) + 1)
    # Chunk k's bytes end at the last cut of its group.
    ends = [cuts[r + 1] for r in range(len(cuts) - 1) if group[r] >= 0]
    last = {int(g): e for g, e in zip(group[group >= 0], ends, strict=True)}
    bounds = np.asarray([cuts[0]] + [last[i] for i in range(k)], np.int64)
    return Alignment(a, b, k, bounds)


def _coverage(spans: np.ndarray, length: int) -> int:
    """The byte offset up to which a side tokenised the text (its last real token's end)."""
    real = spans[spans[:, 1] > spans[:, 0]]
    return int(real[-1, 1]) if len(real) else 0


def align_text(
    text: str, tokenizer_a, tokenizer_b, spellings=(None, None)
) -> tuple[list[int], list[int], Alignment]:
    """Both tokenizations of `text` (no special tokens) and their chunks."""
    ids_a, spans_a = encode_with_spans(tokenizer_a, text, spellings[0])
    ids_b, spans_b = encode_with_spans(tokenizer_b, text, spellings[1])
    return ids_a, ids_b, align_spans(spans_a, spans_b, len(text.encode("utf-8")))
