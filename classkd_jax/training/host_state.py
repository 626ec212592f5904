"""Host-side state of a run that is not a device array: it rides in the checkpoint's meta.

DistiLLM's replay buffer and MiniLLM's rollout store are numpy arrays kept on
the host between steps. For a resumed run to continue exactly they are part
of every checkpoint: `pack` turns a dict of arrays into one JSON string
(compressed `.npz`, base64) that goes into the checkpoint's `meta`, which
Orbax writes atomically with the arrays; `unpack` inverts it bit for bit.
"""

from __future__ import annotations

import base64
import io

import numpy as np


def pack(arrays: dict[str, np.ndarray]) -> str:
    """`{name: array}` -> a JSON-safe string (dtypes and shapes kept exactly)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unpack(text: str) -> dict[str, np.ndarray]:
    """The arrays `pack` wrote."""
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def local_rows(array: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous block of a global batch's rows `[B, ...]`."""
    n = array.shape[0] // process_count
    return array[process_index * n : (process_index + 1) * n]
