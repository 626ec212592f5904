"""DistiLLM's replay buffer of student samples, held on the host.

    buffer = ReplayBuffer(capacity=1000, prompt_width=112, new_tokens=256)
    buffer.push(samples)                      # the sampler's output, fetched
    batch = buffer.sample(rng, rows=8, prompt_buckets=(64, 112))

Rows are stored as the sampler returned them: the prompt left-padded to the
buffer's `prompt_width` (the largest prompt bucket, so rows of every bucket
fit) and the `new_tokens` completion with its mask. Like the reference's
`deque(maxlen=capacity)`, the oldest rows fall out once it is full. A
replay batch is `rows` rows drawn uniformly without replacement (the
reference's `random.sample`), left-trimmed to the smallest prompt bucket
that holds its longest prompt, so it has the shape of a fresh sample batch
and reuses that compiled step. Every process holds the whole buffer (the
samples are gathered), so replay draws are the same everywhere and each
process passes on its own block of rows. `state()` / `restore()` put it in
the checkpoint (`classkd_jax.training.host_state`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from classkd_jax.training import host_state

KEYS = ("prompt_tokens", "prompt_mask", "tokens", "mask")


def _left_pad(x: np.ndarray, width: int) -> np.ndarray:
    pad = width - x.shape[1]
    if pad < 0:
        raise ValueError(f"prompt width {x.shape[1]} exceeds the buffer's {width}")
    return np.pad(x, ((0, 0), (pad, 0)))


class ReplayBuffer:
    """A FIFO of sampled rows with uniform replay (see the module docstring)."""

    def __init__(self, capacity: int, prompt_width: int, new_tokens: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.prompt_width, self.new_tokens = capacity, prompt_width, new_tokens
        self._rows = {
            "prompt_tokens": np.zeros((0, prompt_width), np.int32),
            "prompt_mask": np.zeros((0, prompt_width), bool),
            "tokens": np.zeros((0, new_tokens), np.int32),
            "mask": np.zeros((0, new_tokens), bool),
        }

    def __len__(self) -> int:
        return int(self._rows["tokens"].shape[0])

    @property
    def full(self) -> bool:
        return len(self) >= self.capacity

    def push(self, samples: dict[str, np.ndarray]) -> None:
        """Appends a sample batch (host arrays with `KEYS`, `[B, P]` / `[B, N]`)."""
        new = {
            "prompt_tokens": _left_pad(
                np.asarray(samples["prompt_tokens"], np.int32), self.prompt_width
            ),
            "prompt_mask": _left_pad(np.asarray(samples["prompt_mask"], bool), self.prompt_width),
            "tokens": np.asarray(samples["tokens"], np.int32),
            "mask": np.asarray(samples["mask"], bool),
        }
        if new["tokens"].shape[1] != self.new_tokens:
            raise ValueError(
                f"samples have {new['tokens'].shape[1]} new tokens, the buffer {self.new_tokens}"
            )
        self._rows = {k: np.concatenate([self._rows[k], new[k]])[-self.capacity :] for k in KEYS}

    def sample(
        self, rng: np.random.Generator, rows: int, prompt_buckets: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """`rows` distinct rows drawn uniformly, prompts trimmed to a bucket."""
        if len(self) < rows:
            raise ValueError(f"the replay buffer holds {len(self)} rows, {rows} requested")
        index = np.sort(rng.choice(len(self), size=rows, replace=False))
        out = {k: v[index] for k, v in self._rows.items()}
        longest = int(out["prompt_mask"].sum(axis=1).max())
        width = min([b for b in sorted(prompt_buckets) if b >= longest] or [self.prompt_width])
        width = min(width, self.prompt_width)
        out["prompt_tokens"] = out["prompt_tokens"][:, -width:]
        out["prompt_mask"] = out["prompt_mask"][:, -width:]
        return out

    def state(self) -> str:
        return host_state.pack(self._rows)

    def restore(self, packed: str) -> None:
        rows = host_state.unpack(packed)
        if rows["tokens"].shape[1:] != (self.new_tokens,) or rows["prompt_tokens"].shape[1:] != (
            self.prompt_width,
        ):
            raise ValueError("the checkpoint's replay buffer does not fit this run's shapes")
        self._rows = rows
