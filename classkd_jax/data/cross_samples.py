"""The student's samples re-tokenised for a teacher with another tokenizer (host side).

Between the sampler and the step (GKD's on-policy batches): each completion's
bytes are the concatenation of its sampled tokens' spellings
(`vocab_map.token_bytes`), so the student's token spans are exact even where
the sampled ids are not the canonical tokenization of their text; the text is
the longest valid UTF-8 prefix of those bytes (a completion cut inside a
character, or a byte-level sample that is not text, keeps the rest out of
every chunk). The prompt is re-rendered
in the teacher's template from the example it came from, the completion text
re-tokenised by the teacher's tokenizer, an EOS sampled by the student becomes
the teacher's EOS, and the two are aligned as dataset responses are
(`cross_rows`). Sampler rows are `prompt (left-padded to P) ++ completion [N]`,
so the completion's token j sits at column P + j and `cross_rows.row_arrays`
applies with a prompt of P columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from classkd_jax.data import alignment, batching, cross_rows, templates, vocab_map

__all__ = ["SampleRetokenizer"]


@dataclasses.dataclass
class SampleRetokenizer:
    """Builds the teacher's rows and the chunk arrays for a batch of student samples.

    Attributes:
      examples: the training examples (`TokenizedData.source_index` indexes them).
      source_index: per student training entry, its example.
      student, teacher: the two tokenizers; spellings: their `token_bytes`.
      template: the teacher's prompt template; add_bos: the teacher's prompts get BOS.
      eos: (student's, teacher's) EOS ids; pad: the teacher's pad id.
      max_prompt_length: the teacher's prompt is cut from the left to this.
      buckets: the teacher's padded row lengths; a longer row keeps the head of
        its completion (the rest is in no chunk).
      student_prepends: the student's tokenizer spells a text with a space in
        front (`vocab_map.prepends_space`, e.g. Llama 2's): a completion's first
        space is that prefix, not text, and is left out.
    """

    examples: list
    source_index: np.ndarray
    student: object
    teacher: object
    spellings: tuple
    template: str
    add_bos: bool
    eos: tuple[int, int]
    pad: int
    max_prompt_length: int
    buckets: tuple[int, ...]
    student_prepends: bool = False

    def _teacher_prompt(self, entry: int) -> list[int]:
        ex = self.examples[int(self.source_index[entry])]
        text = templates.format_prompt(ex.instruction, ex.input, self.template)
        ids = list(self.teacher(text, add_special_tokens=False)["input_ids"])
        bos = [int(self.teacher.bos_token_id)] if self.add_bos else []
        return (bos + ids)[-self.max_prompt_length :]

    def _completion(self, tokens: np.ndarray, mask: np.ndarray):
        """(student spans [n, 2], text, ended with EOS) of one sampled completion."""
        ids = [int(t) for t, m in zip(tokens, mask, strict=True) if m]
        spell = self.spellings[0]
        ended = bool(ids) and ids[-1] == self.eos[0]
        body = ids[:-1] if ended else ids
        lengths = [len(spell[i]) if spell[i] is not None else 0 for i in body]
        ends = np.cumsum([0] + lengths)
        raw = b"".join(spell[i] or b"" for i in body)
        if self.student_prepends and raw.startswith(b" "):  # the dummy prefix
            raw, ends = raw[1:], np.maximum(ends - 1, 0)
        valid = vocab_map.valid_utf8_prefix(raw)
        spans = np.stack([ends[:-1], ends[1:]], axis=1) if body else np.zeros((0, 2), np.int64)
        if ended and len(valid) == len(raw):
            spans = np.concatenate([spans, [[len(raw), len(raw) + 1]]])
        return spans, valid.decode("utf-8"), ended and len(valid) == len(raw)

    def _teacher_completion(self, text: str, ended: bool, room: int):
        ids, spans = alignment.encode_with_spans(self.teacher, text, self.spellings[1])
        n = len(text.encode("utf-8"))
        if ended:
            ids, spans = ids + [self.eos[1]], np.concatenate([spans, [[n, n + 1]]])
        return ids[:room], spans[:room]

    def add_teacher(self, samples: dict[str, np.ndarray], index: np.ndarray) -> dict:
        """`samples` (host arrays `prompt_tokens` `[B, P]`, `tokens`, `mask` `[B, N]`) of the
        student training entries `index` `[B]` (-1: filler), plus the `CROSS_KEYS` arrays."""
        prompt_width = samples["prompt_tokens"].shape[1]
        length_s = prompt_width + samples["tokens"].shape[1]
        top = max(self.buckets)
        rows, aligns = [], []
        for b, entry in enumerate(index):
            if entry < 0:
                rows.append([])
                aligns.append(None)
                continue
            prompt = self._teacher_prompt(entry)
            s_spans, text, ended = self._completion(samples["tokens"][b], samples["mask"][b])
            t_ids, t_spans = self._teacher_completion(text, ended, top - len(prompt))
            n = len(text.encode("utf-8")) + (1 if ended else 0)
            aligns.append(alignment.align_spans(s_spans, t_spans, n))
            rows.append([(np.asarray(prompt, np.int32), np.asarray(t_ids, np.int32))])
        longest = max(sum(len(p) + len(r) for p, r in row) for row in rows if row)
        length_t = batching.pick_bucket(longest, self.buckets, "teacher row length")
        out = dict(samples)
        out.update(
            {f"teacher_{k}": v for k, v in batching.pack_rows(rows, length_t, self.pad).items()}
        )
        per_row = []
        for row, align in zip(rows, aligns, strict=True):
            if align is None:
                align = alignment.Alignment(np.zeros(0, np.int32), np.zeros(0, np.int32), 0, None)
                per_row.append(cross_rows.row_arrays(align, 1, 1, length_s, length_t))
            else:
                p_t = len(row[0][0])
                per_row.append(cross_rows.row_arrays(align, prompt_width, p_t, length_s, length_t))
        for key in per_row[0]:
            out[key] = np.stack([r[key] for r in per_row])
        return out
