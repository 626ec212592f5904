"""The cache on disk: a JSON manifest and plain `.npy` arrays per chunk of examples.

    DIR/manifest.json                  what the cache was built from (`fingerprint`)
    DIR/<split>/chunk-00007/<field>.npy  one array per field of `compute.position_stats`
                                         over the chunk's scored positions, plus
                                         `offsets.npy` [E + 1] int64 (example e's
                                         positions are rows offsets[e]:offsets[e+1])

The draws are stored ragged: `ids`, `counts`, `logp` hold only each
position's distinct ids, one after another (`RAGGED`), and
`entry_offsets.npy` [positions + 1] uint32 says where each position's start
(a confident teacher's 16 draws are ~2 distinct ids: 5x fewer bytes than the
fixed width N); a reader pads them back to width N.

Chunk c holds examples [c * E, (c + 1) * E) of the split, in the tokenised
data's order; process p of P writes the chunks c with c % P == p, each into
a temporary directory renamed into place when whole, so a killed job leaves
only whole chunks and a rerun skips them. Readers memory-map the arrays
(`np.load(mmap_mode='r')`): random access by example, no extra dependency,
nothing read that a batch does not use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from classkd_jax.cli import UserError

MANIFEST = "manifest.json"
RAGGED = ("ids", "counts", "logp")  # the draws' fields, stored without padding
FORMAT = 2  # 2: ragged draws
# The manifest's fields a run must match, in the order a mismatch is reported.
CHECKED = (
    "format",
    "teacher",
    "teacher_model",
    "teacher_seed",
    "teacher_files",
    "tokenizer",
    "template",
    "temperature",
    "num_samples",
    "top_k",
    "seed",
    "data",
)


def chunk_dir(root: Path, split: str, chunk: int) -> Path:
    return Path(root) / split / f"chunk-{chunk:05d}"


def num_chunks(examples: int, chunk_examples: int) -> int:
    return -(-examples // chunk_examples)


def write_manifest(root: Path, manifest: dict) -> None:
    """Writes `manifest` atomically (tmp + rename)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"teacher.cache={root}: no {MANIFEST} there; build it with "
            "python -m classkd_jax.teacher_cache --config ... --out DIR"
        )
    return json.loads(path.read_text())


def mismatch(found: dict, expected: dict) -> str | None:
    """The first checked field where `found` differs from `expected`, as
    'FIELD: the cache has A, this run B', or None when they match."""
    for key in CHECKED:
        a, b = found.get(key), expected.get(key)
        if a != b:
            return f"{key}: the cache has {_short(a)}, this run {_short(b)}"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(root: Path, expected: dict, common_splits: bool = False) -> dict:
    """The cache's manifest, or a one-line `UserError` naming the first differing field.

    `common_splits`: the data fingerprints are compared on the splits both have
    (the builder adds the missing ones)."""
    found = read_manifest(root)
    if common_splits:
        both = set(found.get("data", {})) & set(expected["data"])
        only = lambda m: {**m, "data": {k: v for k, v in m.get("data", {}).items() if k in both}}  # noqa: E731
        diff = mismatch(only(found), only(expected))
    else:
        diff = mismatch(found, expected)
    if diff:
        raise UserError(
            f"teacher.cache={root} does not match this run's config ({diff}); rebuild it "
            "with python -m classkd_jax.teacher_cache --config <this config> --out DIR"
        )
    return found


def ragged(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fixed-width draws `[P, N]` (distinct ids first, count 0 = padding) -> the
    flat entries and `entry_offsets` [P + 1]; the other fields unchanged."""
    keep = arrays["counts"] > 0
    out = {k: v for k, v in arrays.items() if k not in RAGGED}
    out.update({k: np.asarray(arrays[k])[keep] for k in RAGGED})
    ends = np.cumsum(keep.sum(axis=1))
    if ends.size and ends[-1] >= 2**32:
        raise ValueError("a chunk holds >= 2**32 draws entries; lower teacher_cache.chunk_examples")
    out["entry_offsets"] = np.concatenate([[0], ends]).astype(np.uint32)
    return out


def padded(entries: dict[str, np.ndarray], starts: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The inverse of `ragged` for R positions: `[R, width]` each, zero padding.

    Args:
      entries: the R positions' flat `RAGGED` entries, in order.
      starts: `[R + 1]` their offsets into `entries`, from 0.
      width: N.
    """
    lengths = np.diff(starts).astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(int(starts[-1])) - np.repeat(starts[:-1].astype(np.int64), lengths)
    out = {}
    for k, v in entries.items():
        full = np.zeros((len(lengths), width), v.dtype)
        full[rows, cols] = v
        out[k] = full
    return out


def write_chunk(root: Path, split: str, chunk: int, arrays: dict[str, np.ndarray]) -> None:
    """Writes one chunk's arrays atomically: a temporary directory renamed into place."""
    final = chunk_dir(root, split, chunk)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, value in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(value))
    os.replace(tmp, final)


def chunk_done(root: Path, split: str, chunk: int) -> bool:
    return (chunk_dir(root, split, chunk) / "offsets.npy").is_file()


class SplitReader:
    """Memory-mapped access to one split's cached positions, by example index."""

    def __init__(self, root: Path, split: str, manifest: dict):
        info = manifest["splits"][split]
        self.root, self.split = Path(root), split
        self.examples, self.chunk_examples = int(info["examples"]), int(info["chunk_examples"])
        self.width = int(manifest["num_samples"])
        self._chunks: dict[int, dict[str, np.ndarray]] = {}

    def _chunk(self, c: int) -> dict[str, np.ndarray]:
        if c not in self._chunks:
            d = chunk_dir(self.root, self.split, c)
            if not chunk_done(self.root, self.split, c):
                raise UserError(
                    f"teacher.cache={self.root} is incomplete ({self.split} chunk {c} missing); "
                    "rerun the same python -m classkd_jax.teacher_cache command to finish it"
                )
            self._chunks[c] = {p.stem: np.load(p, mmap_mode="r") for p in d.glob("*.npy")}
        return self._chunks[c]

    def example(self, index: int) -> dict[str, np.ndarray]:
        """Example `index`'s stored fields, each `[R, ...]` over its R scored positions."""
        if not 0 <= index < self.examples:
            raise IndexError(f"{self.split} example {index} not in [0, {self.examples})")
        c, e = divmod(index, self.chunk_examples)
        arrays = self._chunk(c)
        lo, hi = int(arrays["offsets"][e]), int(arrays["offsets"][e + 1])
        skip = ("offsets", "entry_offsets") + RAGGED
        out = {k: v[lo:hi] for k, v in arrays.items() if k not in skip}
        starts = np.asarray(arrays["entry_offsets"][lo : hi + 1], np.int64)
        a, b = int(starts[0]), int(starts[-1])
        out.update(padded({k: arrays[k][a:b] for k in RAGGED}, starts - a, self.width))
        return out
