"""A deterministic, resumable, per-process batch iterator.

Every process holds the whole (small) tokenised dataset and computes the same
epoch plan from `(seed, epoch)`; process p then materialises only rows
`[p * B_local, (p + 1) * B_local)` of each global batch. Computing the plan
globally is what lets every process agree on the length bucket of a batch
(the longest example of the *global* batch decides it), so a jitted step
compiles once per bucket on every host. Assemble global arrays with
`to_global` (`jax.make_array_from_process_local_data`).

The position is two integers (epoch, batch); `get_state()` returns them with
a fingerprint of the data and batch geometry as a JSON-serialisable dict that
belongs in the checkpoint, and `set_state()` checks the fingerprint so a
resumed run cannot silently read a different dataset.

We write this small iterator rather than a grain pipeline because the global
bucket choice and packing are whole-batch decisions that are plain here, and
the state stays two integers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from classkd_jax.data import batching
from classkd_jax.data.tokenize import TokenizedData

KINDS = ("full", "prompt", "paired")
_log = logging.getLogger(__name__)


def _process_geometry(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # deferred: the rest of the data package does not need JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Yields host-local numpy batches of one kind (see `batching`).

    Kinds: 'full' (prompt+response, right-padded, optionally packed),
    'prompt' (prompt-only, left-padded), 'paired' (both for the same
    examples: the 'full' keys plus `prompt_tokens`, `prompt_mask`,
    `prompt_positions`, for steps that may replace the response by samples).

    Args:
      data: the tokenised examples (every process passes the same data).
      kind: 'full', 'prompt' or 'paired'.
      global_batch_size: rows per step over all processes; each process gets
        `global_batch_size // process_count` rows.
      seed: the shuffling seed; epoch e uses the permutation of `(seed, e)`.
      shuffle: False keeps the data order (evaluation).
      num_epochs: stop after this many epochs (None: forever).
      length_buckets: padded lengths T of prompt+response rows; the longest
        row of the global batch picks the bucket; the largest is the packing
        capacity.
      prompt_buckets: padded lengths P of prompt-only batches.
      pack: several examples per row ('full' only).
      drop_remainder: False completes the last batch with filler rows
        (`valid` = 0), so one epoch covers every example exactly once.
      process_index, process_count: default `jax.process_index()` /
        `jax.process_count()`.
      name: used in logs and error messages.

    Batches carry `index` (into `data`; `data.source_index[index]` is the
    position in the example list that was tokenised) unless packed.
    """

    def __init__(
        self,
        data: TokenizedData,
        *,
        kind: str = "full",
        global_batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        length_buckets: Sequence[int] = (128, 256, 512),
        prompt_buckets: Sequence[int] = (64, 128, 256),
        pack: bool = False,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        name: str = "data",
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if pack and kind != "full":
            raise ValueError(
                f"pack=True needs kind='full' (got {kind!r}): packed rows have no prompt"
            )
        if len(data) == 0:
            raise ValueError(
                f"{name}: no examples left after tokenisation ({data.stats.summary()})"
            )
        self.process_index, self.process_count = _process_geometry(process_index, process_count)
        if global_batch_size <= 0 or global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a positive multiple of the "
                f"process count {self.process_count}"
            )
        self.data, self.kind, self.name = data, kind, name
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // self.process_count
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.pack, self.drop_remainder = pack, drop_remainder
        self.length_buckets = tuple(sorted(length_buckets))
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self._lengths = data.lengths()
        self._prompt_lengths = np.array([len(p) for p in data.prompts])
        self._check_fits()
        self._epoch, self._batch = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def _check_fits(self) -> None:
        if self.kind != "prompt":
            i = int(np.argmax(self._lengths))
            batching.pick_bucket(
                int(self._lengths[i]), self.length_buckets, f"{self.name}: example {i} length"
            )
        if self.kind != "full":
            i = int(np.argmax(self._prompt_lengths))
            batching.pick_bucket(
                int(self._prompt_lengths[i]),
                self.prompt_buckets,
                f"{self.name}: example {i} prompt length",
            )

    # ----- plan -----
    def _rows(self, epoch: int) -> list[list[int]]:
        """The epoch's rows (lists of example indices), identical on all hosts."""
        if self._plan is None or self._plan[0] != epoch:
            n = len(self.data)
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                order = np.arange(n)
            if self.pack:
                rows = batching.plan_packing(self._lengths, order, self.length_buckets[-1])
            else:
                rows = [[int(i)] for i in order]
            self._plan = (epoch, rows)
        return self._plan[1]

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        """Global batches in `epoch` (default: the current one)."""
        n_rows = len(self._rows(self._epoch if epoch is None else epoch))
        if self.drop_remainder:
            return n_rows // self.global_batch_size
        return math.ceil(n_rows / self.global_batch_size)

    # ----- state -----
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "num_examples": len(self.data),
            "num_tokens": int(self._lengths.sum()),
            "global_batch_size": self.global_batch_size,
            "kind": self.kind,
            "pack": self.pack,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def get_state(self) -> dict[str, Any]:
        """The position of the next batch, JSON-serialisable."""
        return {"epoch": self._epoch, "batch": self._batch, **self._fingerprint()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at `state` (from `get_state`); checks it is the same data."""
        expected = self._fingerprint()
        diff = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                f"{self.name}: iterator state does not match this data: (saved, current) = {diff}"
            )
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    # ----- iteration -----
    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration
            n_batches = self.batches_in_epoch()
            if n_batches == 0:
                raise ValueError(
                    f"{self.name}: {len(self._rows(self._epoch))} rows < global batch "
                    f"{self.global_batch_size} with drop_remainder"
                )
            if self._batch < n_batches:
                break
            self._epoch, self._batch = self._epoch + 1, 0
        if self._batch == 0 and self.process_index == 0:
            _log.info("%s: epoch %d, %s", self.name, self._epoch, self.data.stats.summary())
        rows = self._rows(self._epoch)
        start = self._batch * self.global_batch_size
        global_rows = rows[start : start + self.global_batch_size]
        lo = self.process_index * self.local_batch_size
        local_rows = global_rows[lo : lo + self.local_batch_size]
        self._batch += 1
        return self._make_batch(global_rows, local_rows)

    def _make_batch(self, global_rows, local_rows) -> dict[str, np.ndarray]:
        data, pad = self.data, self.data.pad_id
        n_fill = self.local_batch_size - len(local_rows)
        flat = [i for row in local_rows for i in row]
        batch: dict[str, np.ndarray] = {}
        if self.kind != "prompt":
            fill = max(sum(int(self._lengths[i]) for i in row) for row in global_rows)
            t = batching.pick_bucket(fill, self.length_buckets)
            rows = [[(data.prompts[i], data.responses[i]) for i in row] for row in local_rows]
            batch.update(batching.pack_rows(rows + [[]] * n_fill, t, pad))
        if self.kind != "full":
            p = max(int(self._prompt_lengths[i]) for row in global_rows for i in row)
            p = batching.pick_bucket(p, self.prompt_buckets)
            prompts = batching.left_pad_prompts(
                [data.prompts[i] for i in flat],
                p,
                pad,
                index=flat,
                batch_size=self.local_batch_size,
            )
            if self.kind == "prompt":
                return prompts
            batch.update({f"prompt_{k}": prompts[k] for k in ("tokens", "mask", "positions")})
        if not self.pack:
            batch["index"] = np.array(flat + [-1] * n_fill, np.int32)
            batch["valid"] = (batch["index"] >= 0).astype(np.int32)
        return batch


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, Any]:
    """Assembles host-local batches into global `jax.Array`s.

    Args:
      batch: this process's rows (leading dim B_local).
      sharding: a `jax.sharding.Sharding` for the batch dimension, e.g.
        `NamedSharding(mesh, P(('data', 'fsdp')))`; trailing dims replicate.

    Returns:
      The same keys with global arrays of leading dim B_local * process_count.
    """
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
