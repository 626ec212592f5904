"""The offline teacher: its distributions over a run's fixed rows, computed once
and read by every method, seed and epoch that trains on those rows
(docs/teacher_cache.md).

    python -m classkd_jax.teacher_cache --config configs/kd.py:size=tiny --out /tmp/tc
    python -m classkd_jax.train --config configs/kd.py:size=tiny --workdir /tmp/kd \\
        --config.teacher.cache=/tmp/tc
"""

# `builder` (the teacher's forward, `classkd_jax.training.step`) is imported where
# a cache is built, not here: the trainer's objectives import `lookup`.
from classkd_jax.teacher_cache.lookup import CACHE_KEYS, Lookup
from classkd_jax.teacher_cache.store import SplitReader, check, read_manifest

__all__ = ["CACHE_KEYS", "Lookup", "SplitReader", "check", "read_manifest"]
