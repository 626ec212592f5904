"""Where a run's logs go: library INFO chatter to `DIR/train.log`, the terminal stays quiet.

JAX's backend probe, Orbax's checkpoint finalisation messages (through absl),
transformers' notices and Python warnings all land in the log file; the
terminal shows only what the trainer prints (a header, the progress bar, a
summary, and errors).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_libraries() -> None:
    """Before any library logs: no C++ INFO lines, transformers through `logging`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@contextlib.contextmanager
def to_file(path: str | Path) -> Iterator[logging.Handler]:
    """Sends every logger's INFO and above (ours, JAX, Orbax/absl, transformers)
    to `path` and nothing to the terminal; the previous set-up is restored on exit
    (so a run called from other code, or a test, leaves logging as it found it)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    for handler in saved[0]:
        root.removeHandler(handler)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # A full disk must not print "--- Logging error ---" on the terminal for every record.
    raising, logging.raiseExceptions = logging.raiseExceptions, False
    logging.captureWarnings(True)
    restore = [_silence_absl(), _route_transformers()]
    try:
        yield handler
    finally:
        for undo in restore:
            undo()
        logging.captureWarnings(False)
        logging.raiseExceptions = raising
        root.removeHandler(handler)
        handler.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def _silence_absl():
    """absl (Orbax logs through it) keeps its own stderr handler otherwise."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover
        return lambda: None
    handler = absl_logging.get_absl_handler()
    level, verbosity = handler.level, absl_logging.get_verbosity()
    handler.setLevel(logging.CRITICAL + 1)
    absl_logging.set_verbosity(absl_logging.INFO)

    def undo():
        handler.setLevel(level)
        absl_logging.set_verbosity(verbosity)

    return undo


def _route_transformers():
    """transformers has its own stderr handler and does not propagate."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return lambda: None
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()

    def undo():
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()

    return undo
