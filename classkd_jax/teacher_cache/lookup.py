"""Per-batch arrays from the cache: a batch's positions found by their examples' tokens.

    lookup = Lookup(SplitReader(...), tokenized_split, loss='sampled')
    extra = lookup.batch_arrays(batch)   # host-local numpy batch -> cache_* [B, T, W]

A packed row holds several examples (segments); the trainer's packing and
order depend on the seed, the cache does not: each segment's prompt+response
ids are looked up (by a hash of its tokens) among the tokenised examples the
cache was built from, and that example's stored positions fill the
segment's scored columns, in order. Unscored columns get weight-0 padding.
"""

from __future__ import annotations

import numpy as np

from classkd_jax.data.tokenize import TokenizedData
from classkd_jax.teacher_cache.store import SplitReader

# The per-token extras a cached loss reads, `[B, T, W]` each.
CACHE_KEYS = ("cache_ids", "cache_counts", "cache_logp")


def _key(tokens: np.ndarray) -> bytes:
    return np.asarray(tokens, np.int32).tobytes()


class Lookup:
    """Maps a batch's segments to cached examples and gathers their stored fields.

    Args:
      reader: the split's cached positions.
      data: the tokenised split the cache was built from (same order).
      loss: 'sampled' (ids, counts, log-probs of the draws) or 'topk' (the
        top-k ids and log-probs; counts 1).
    """

    def __init__(self, reader: SplitReader, data: TokenizedData, loss: str = "sampled"):
        self.reader, self.loss = reader, loss
        self.index: dict[bytes, int] = {}
        for i, (p, r) in enumerate(zip(data.prompts, data.responses, strict=True)):
            self.index.setdefault(_key(np.concatenate([p, r])), i)

    def fields(self, example: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, counts, logp) `[R, W]` of an example's R scored positions."""
        f = self.reader.example(example)
        if self.loss == "topk":
            if "topk_ids" not in f:
                raise ValueError("teacher_cache.loss='topk' but the cache has top_k=0")
            return f["topk_ids"], np.ones(f["topk_ids"].shape, np.int32), f["topk_logp"]
        return f["ids"], f["counts"], f["logp"]

    def batch_arrays(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`CACHE_KEYS` arrays `[B, T, W]` for a host-local scored batch."""
        tokens, seg, mask = batch["tokens"], batch["segment_ids"], batch["loss_mask"]
        out = None
        for row in range(tokens.shape[0]):
            for s in np.unique(seg[row][seg[row] > 0]):
                cols = np.nonzero(seg[row] == s)[0]
                example = self.index.get(_key(tokens[row, cols]))
                if example is None:
                    raise ValueError(
                        f"teacher.cache: a batch row's example (row {row}, segment {s}) is not in "
                        "the cache; was it built from this run's data?"
                    )
                ids, counts, logp = self.fields(example)
                scored = cols[mask[row, cols] != 0]
                if len(scored) != len(ids):
                    raise ValueError(
                        f"teacher.cache: example {example} has {len(ids)} cached positions, "
                        f"the batch scores {len(scored)}"
                    )
                if out is None:
                    shape = tokens.shape + (ids.shape[-1],)
                    out = {
                        "cache_ids": np.zeros(shape, np.int32),
                        "cache_counts": np.zeros(shape, np.int32),
                        "cache_logp": np.zeros(shape, np.float32),
                    }
                out["cache_ids"][row, scored] = ids
                out["cache_counts"][row, scored] = counts
                out["cache_logp"][row, scored] = logp
        if out is None:
            width = self.fields(0)[0].shape[-1]
            shape = tokens.shape + (width,)
            out = {
                k: np.zeros(shape, np.float32 if k == "cache_logp" else np.int32)
                for k in CACHE_KEYS
            }
        return out
