"""A run's checkpoints: the last k for resuming, and the best by the validation metric.

    DIR/checkpoints/<step>/   student_params, classmate_params, opt_states, counters, meta
    DIR/best/<step>/          student_params, classmate_params, meta (one step, the best)

Both are `classkd_jax.checkpoint` layouts (Orbax, atomic: a step appears only
once complete), so `python -m classkd_jax.generate --model DIR/checkpoints`
and `load_model(DIR/best, 'student')` read them. `meta` holds the models'
configs, the tokenizer path, the data iterators' positions and the best
metric so far: with the arrays, everything a resumed run needs to continue
exactly. The frozen teacher is never written here.

`restore_newest` resumes from the newest step that restores: a damaged newer
one (`checkpoint.newest_readable`) is moved aside as `<step>.damaged-<reason>`
once an older one has restored, with one line each. A save that fails (a full
disk, a file-size limit, a read-only directory) is one `UserError` line; the
previous steps stay as they were, and Orbax's half-written
`<step>.orbax-checkpoint-tmp*` directory is never taken for a step (the next
save of that step replaces it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from classkd_jax import checkpoint
from classkd_jax.cli import UserError
from classkd_jax.training.state import GapState, RunState, TrainState


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _items(state: RunState, *, models_only: bool) -> dict[str, Any]:
    items = {"student_params": state.student.params}
    if state.classmate is not None:
        items["classmate_params"] = state.classmate.params
    if models_only:
        return items
    opt = {"student": state.student.opt_state}
    counters = {"step": state.step, "student_step": state.student.step}
    if state.classmate is not None:
        opt["classmate"] = state.classmate.opt_state
        counters["classmate_step"] = state.classmate.step
        counters["gap"] = {
            "student_kl": state.gap.student_kl,
            "classmate_kl": state.gap.classmate_kl,
            "count": state.gap.count,
        }
    items["opt_states"] = opt
    items["counters"] = counters
    return items


def _save(manager: ocp.CheckpointManager, step: int, items: dict, meta: dict) -> None:
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    log = logging.getLogger("classkd_jax")
    with checkpoint.stderr_to_log(log) as settle:
        try:
            manager.save(
                step,
                args=ocp.args.Composite(**args, **{checkpoint.META: ocp.args.JsonSave(meta)}),
            )
            manager.wait_until_finished()
            return
        except Exception as e:  # noqa: BLE001 - tensorstore reports a full disk as ValueError
            log.error("saving step %d failed", step, exc_info=e)
            error = e
            settle()
    previous = [s for s in manager.all_steps() if s != step]
    kept = f"checkpoint {max(previous)} is intact" if previous else "no earlier checkpoint"
    raise UserError(
        f"saving checkpoint {step} in {manager.directory} failed ({save_failure(error)}); "
        f"{kept}: free space or fix the directory, then rerun the same command to resume"
    ) from None


def save_failure(error: BaseException) -> str:
    """Why a save failed, in a few words."""
    text = f"{type(error).__name__}: {error}"
    for needle, reason in (
        ("No space left", "no space left on the device"),
        ("File too large", "a file-size limit"),
        ("Disk quota", "the disk quota is exceeded"),
        ("Read-only file system", "a read-only file system"),
        ("Permission denied", "permission denied"),
    ):
        if needle.lower() in text.lower():
            return reason
    return f"{type(error).__name__}: {' '.join(str(error).split())[:80]}"


def all_processes_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class RunCheckpoints:
    """Saves and restores a run's `RunState` (every process takes part, as Orbax requires)."""

    def __init__(self, workdir: str | Path, keep: int):
        self.directory = Path(workdir) / "checkpoints"
        self.best_directory = Path(workdir) / "best"
        self._keep = max(int(keep), 1)
        self._manager: ocp.CheckpointManager | None = None
        self._best: ocp.CheckpointManager | None = None

    def latest_step(self) -> int | None:
        return checkpoint.latest_step(self.directory)

    def save(self, step: int, state: RunState, meta: dict) -> None:
        """Writes `state` as step `step` (a step that exists already is left alone)."""
        if self._manager is None:
            self._manager = _manager(self.directory, self._keep)
        if step in self._manager.all_steps():
            return
        _save(self._manager, step, _items(state, models_only=False), meta)

    def save_best(self, step: int, state: RunState, meta: dict) -> None:
        """Replaces the best checkpoint with the models of `state` at `step`."""
        if self._best is None:
            self._best = _manager(self.best_directory, 1)
        if step in self._best.all_steps():
            return
        _save(self._best, step, _items(state, models_only=True), meta)

    def restore(self, abstract: RunState, step: int | None = None) -> tuple[RunState, dict]:
        """The state at `step` (default the latest), placed as `abstract` says.

        Args:
          abstract: a `RunState` of `jax.ShapeDtypeStruct`s with shardings (the
            run's own state structure, e.g. from `jax.eval_shape`), so arrays
            are read straight into their shards, on a new mesh if it changed.
        """
        targets = _items(abstract, models_only=False)
        items, meta = checkpoint.restore_checkpoint(self.directory, targets, step)
        c, opt = items["counters"], items["opt_states"]
        student = TrainState(c["student_step"], items["student_params"], opt["student"])
        classmate = gap = None
        if abstract.classmate is not None:
            classmate = TrainState(c["classmate_step"], items["classmate_params"], opt["classmate"])
            g = c["gap"]
            gap = GapState(g["student_kl"], g["classmate_kl"], g["count"])
        return RunState(c["step"], student, classmate, gap), meta

    def restore_newest(
        self, abstract: RunState, accept: Callable[[dict], None] = lambda meta: None
    ) -> tuple[RunState, dict, int, list[str]]:
        """The newest step that restores: `(state, meta, step, lines)`.

        Args:
          abstract: as for `restore`.
          accept: takes the host-side part of a restored step (data positions,
            the batch plan's state) and raises when it does not read.

        Returns:
          lines: one per damaged newer step, moved aside (by process 0).

        Raises:
          checkpoint.NoReadableCheckpoint: no step restores; nothing is moved.
        """

        def load(step: int):
            error = None
            try:
                state, meta = self.restore(abstract, step)
                accept(meta)
            except Exception as e:  # noqa: BLE001 - damage shows as any error of the readers
                error = e
            if not all_processes_agree(error is None):
                raise error or RuntimeError("another process could not restore this step")
            return state, meta

        (state, meta), step, skipped = checkpoint.newest_readable(
            self.directory, load, what="the run"
        )
        lines = []
        for bad, reason in skipped:
            kept = "kept"
            if jax.process_index() == 0:
                kept = f"kept as {checkpoint.set_aside(self.directory, bad, reason).name}"
            lines.append(
                f"checkpoint {bad} cannot be restored ({reason}); {kept}; resuming from step {step}"
            )
        return state, meta, step, lines

    def close(self) -> None:
        for manager in (self._manager, self._best):
            if manager is not None:
                manager.wait_until_finished()
                manager.close()
        self._manager = self._best = None


def abstract_like(state: RunState) -> RunState:
    """`ShapeDtypeStruct`s with the shardings of a live state (a restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
