"""Teacher rows and chunk arrays for a teacher with another tokenizer (host side).

Every example is tokenised twice: for the student (its template and
tokenizer, the run's `TokenizedData`) and for the teacher (`teacher.template`,
`teacher.tokenizer`). Prompts differ (other templates, other special tokens),
so only responses are aligned (`alignment.align_spans`), with the EOS of both
sides as one extra virtual byte at the end: the loss is on response tokens
only. Per batch row (one example per row: cross-tokenizer rows are not
packed) the arrays below are built at static shapes `[T_s]`, `[T_t]`,
`[K = T_s]`, so one compiled step serves every batch of a bucket pair.

Keys added to a student batch (target positions: column t scores token t+1):
  teacher_tokens, teacher_positions, teacher_segment_ids, teacher_targets,
  teacher_loss_mask: the teacher's rows `[B, T_t]`, as `batching.pack_rows`;
  student_chunk `[B, T_s]`, teacher_chunk `[B, T_t]` int32: the chunk of the
  token each column predicts (-1: none);
  chunk_mask `[B, T_s]` float32: chunk k exists (K = T_s);
  teacher_index `[B, T_s]` int32: for a student column that predicts a
  chunk's first token, the teacher column predicting the chunk's first
  teacher token (0 elsewhere);
  first_mask, exact_mask `[B, T_s]` float32: the column predicts a chunk's
  first token / a chunk of one token on each side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from classkd_jax.data import alignment, batching
from classkd_jax.data.tokenize import TokenizedData

CROSS_KEYS = (
    "teacher_tokens",
    "teacher_positions",
    "teacher_segment_ids",
    "teacher_targets",
    "teacher_loss_mask",
    "student_chunk",
    "teacher_chunk",
    "chunk_mask",
    "teacher_index",
    "first_mask",
    "exact_mask",
)

__all__ = ["CROSS_KEYS", "CrossRows", "response_alignment", "row_arrays"]


def _response_spans(tokenizer, text: str, ids: np.ndarray, eos: int, spelling) -> np.ndarray:
    """Byte spans of a tokenised response `ids` (maybe truncated, maybe ending in EOS,
    which gets the virtual byte after the text)."""
    enc_ids, spans = alignment.encode_with_spans(tokenizer, text, spelling)
    body = len(ids) - (1 if len(ids) and ids[-1] == eos and len(ids) == len(enc_ids) + 1 else 0)
    if list(ids[:body]) != list(enc_ids[:body]):
        raise ValueError(
            f"{type(tokenizer).__name__}: the response ids differ from a re-encoding of its "
            "text (the alignment needs the tokenizer's offsets of the same ids)"
        )
    spans = spans[:body]
    if body < len(ids):
        n = len(text.encode("utf-8"))
        spans = np.concatenate([spans, [[n, n + 1]]])
    return spans


def response_alignment(
    text: str,
    student_ids: np.ndarray,
    teacher_ids: np.ndarray,
    tokenizers: tuple,
    eos: tuple[int, int],
    spellings: tuple = (None, None),
) -> alignment.Alignment:
    """Chunks of one response as each side tokenised it; `tokenizers`, `eos` and
    `spellings` (`vocab_map.token_bytes`) are (student's, teacher's)."""
    s = _response_spans(tokenizers[0], text, student_ids, eos[0], spellings[0])
    t = _response_spans(tokenizers[1], text, teacher_ids, eos[1], spellings[1])
    return alignment.align_spans(s, t, len(text.encode("utf-8")) + 1)


def row_arrays(
    align: alignment.Alignment, prompt_s: int, prompt_t: int, length_s: int, length_t: int
) -> dict[str, np.ndarray]:
    """One row's chunk arrays (module docstring) for a response after `prompt_s` /
    `prompt_t` prompt tokens in rows of `length_s` / `length_t` columns."""
    s_chunk = np.full(length_s, -1, np.int32)
    t_chunk = np.full(length_t, -1, np.int32)
    index = np.zeros(length_s, np.int32)
    first = np.zeros(length_s, np.float32)
    exact = np.zeros(length_s, np.float32)
    chunk_mask = np.zeros(length_s, np.float32)
    if prompt_s < 1 or prompt_t < 1:  # the first response token is predicted by no column
        raise ValueError("cross-tokenizer rows need a non-empty prompt on both sides")
    a, b = align.a, align.b
    s_chunk[prompt_s - 1 : prompt_s - 1 + len(a)] = a
    t_chunk[prompt_t - 1 : prompt_t - 1 + len(b)] = b
    for k in range(align.num_chunks):
        sa, sb = np.flatnonzero(a == k), np.flatnonzero(b == k)
        col = prompt_s - 1 + sa[0]
        index[col] = prompt_t - 1 + sb[0]
        first[col] = 1.0
        exact[col] = float(len(sa) == 1 and len(sb) == 1)
    chunk_mask[: align.num_chunks] = 1.0
    return {
        "student_chunk": s_chunk,
        "teacher_chunk": t_chunk,
        "chunk_mask": chunk_mask,
        "teacher_index": index,
        "first_mask": first,
        "exact_mask": exact,
    }


@dataclasses.dataclass
class CrossRows:
    """The teacher's tokenisation of the training examples and their alignments.

    Attributes:
      teacher: the teacher's `TokenizedData` over the same examples, entry i
        the same example as the student's entry i.
      alignments: per example its response `Alignment`.
      buckets: the teacher's padded row lengths (the student's `length_buckets`).
    """

    teacher: TokenizedData
    alignments: list[alignment.Alignment]
    buckets: tuple[int, ...]

    def add_teacher(self, batch: dict[str, np.ndarray], student: TokenizedData) -> dict:
        """`batch` (unpacked student rows with `index`) plus the `CROSS_KEYS` arrays."""
        if "index" not in batch:
            raise ValueError("cross-tokenizer rows need unpacked batches (data.pack=False)")
        idx = batch["index"]
        length_s = batch["tokens"].shape[1]
        kept = [int(i) for i in idx if i >= 0]
        longest = max(len(self.teacher.prompts[i]) + len(self.teacher.responses[i]) for i in kept)
        length_t = batching.pick_bucket(longest, self.buckets, "teacher row length")
        rows = [
            [(self.teacher.prompts[i], self.teacher.responses[i])] if i >= 0 else [] for i in idx
        ]
        packed = batching.pack_rows(rows, length_t, self.teacher.pad_id)
        out = dict(batch)
        out.update({f"teacher_{k}": v for k, v in packed.items()})
        per_row = []
        for i in idx:
            if i < 0:
                empty = alignment.Alignment(np.zeros(0, np.int32), np.zeros(0, np.int32), 0, None)
                per_row.append(row_arrays(empty, 1, 1, length_s, length_t))
                continue
            per_row.append(
                row_arrays(
                    self.alignments[i],
                    len(student.prompts[i]),
                    len(self.teacher.prompts[i]),
                    length_s,
                    length_t,
                )
            )
        for key in per_row[0]:
            out[key] = np.stack([r[key] for r in per_row])
        return out


def build_cross_rows(
    examples: Sequence,
    student: TokenizedData,
    teacher: TokenizedData,
    student_tokenizer,
    teacher_tokenizer,
    eos: tuple[int, int],
    buckets: Sequence[int],
) -> CrossRows:
    """Aligns every kept example's response (`student`, `teacher`: the two
    tokenisations of `examples`, which must have kept the same examples)."""
    if not np.array_equal(student.source_index, teacher.source_index):
        raise ValueError(
            "the teacher's tokenisation kept other examples than the student's (a prompt "
            "over max_prompt_length on one side only); use data.long_prompts='truncate'"
        )
    aligns = [
        response_alignment(
            examples[int(src)].response,
            student.responses[i],
            teacher.responses[i],
            student_tokenizer,
            teacher_tokenizer,
            eos,
        )
        for i, src in enumerate(student.source_index)
    ]
    return CrossRows(teacher, aligns, tuple(buckets))
