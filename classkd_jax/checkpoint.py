"""Training checkpoints: atomic, one directory per step, restorable item by item (Orbax).

Layout: `<directory>/<step>/` holds one Orbax item per entry of `items` (any
pytree of arrays: params, optimizer states, PRNG keys) and a JSON item `meta`.
Orbax writes a step into a temporary directory and renames it when complete, so
a crash never leaves a half-written step that `latest_step` would pick up, and
nothing already written is touched by a later save.

A step that exists but cannot be read (a truncated or missing file, a bad
manifest, unreadable metadata) is damage, not a bug: `newest_readable` tries
the steps newest first and says which it skipped and why
(`unreadable_reason`, a few words); the trainer moves a damaged step aside
(`set_aside`: `<step>.damaged-<reason>`, never deleted, and a name neither
Orbax nor `all_steps` takes for a step).

Model convention (what `load_model` and `python -m classkd_jax.generate
--model` read): a model in role R (e.g. 'student', 'teacher', 'classmate')
stores its params as the item `R_params` and its `ModelConfig` as
`meta['models'][R]` (`model_meta`); `meta['tokenizer']`, when present, is the
path of the tokenizer directory that goes with the models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from classkd_jax.models import ModelConfig, abstract_params

META = "meta"
DAMAGED = "damaged"  # a damaged step is renamed <step>.damaged-<reason>


def _manager(directory: str | os.PathLike, *, create: bool) -> ocp.CheckpointManager:
    """A synchronous manager; it creates `directory` only when `create` (reading and
    probing write nothing: tests/test_checkpoint.py checks)."""
    options = ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    items: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Path:
    """Writes `items` and `meta` as step `step` of `directory`, atomically.

    Args:
      directory: the checkpoint root (created).
      step: the training step; a step that already exists is an error.
      items: name -> pytree of arrays (sharded arrays are written by every host).
      meta: a JSON-serialisable dict (configs, data iterator state, ...).

    Returns:
      The step directory.
    """
    if META in items:
        raise ValueError(f"checkpoint item name {META!r} is reserved for the metadata")
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    with _manager(directory, create=True) as manager:
        if step in manager.all_steps():
            raise FileExistsError(f"checkpoint step {step} already exists in {directory}")
        manager.save(step, args=ocp.args.Composite(**args, **{META: ocp.args.JsonSave(meta)}))
        manager.wait_until_finished()
        return Path(manager.directory) / str(step)


def _split(path: str | os.PathLike, step: int | None) -> tuple[Path, int]:
    """(root, step) for a checkpoint root (latest or given step) or a step directory."""
    path = Path(path).expanduser().absolute()
    if step is None and path.name.isdigit() and (path / META).is_dir():
        return path.parent, int(path.name)
    steps = all_steps(path)
    if not steps:
        raise FileNotFoundError(
            f"{str(path)!r} holds no classkd-jax checkpoint (expected <dir>/<step>/{META})"
        )
    if step is None:
        return path, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"checkpoint step {step} not in {str(path)!r} (steps: {steps})")
    return path, step


def all_steps(directory: str | os.PathLike) -> list[int]:
    """The complete steps under `directory`, ascending ([] when there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    with _manager(directory, create=False) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step under `directory`, or None."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint root with at least one complete step, or a step directory.

    By layout alone (a `<step>/meta` directory; Orbax renames a step into place
    only once it is complete), so probing any directory is cheap and reads no
    checkpoint machinery.
    """
    path = Path(path).expanduser()
    if path.name.isdigit() and (path / META).is_dir():
        return True
    return path.is_dir() and any(
        c.name.isdigit() and (c / META).is_dir() for c in path.iterdir() if c.is_dir()
    )


def read_meta(path: str | os.PathLike, step: int | None = None) -> dict:
    """The JSON metadata of a step (the latest by default)."""
    root, step = _split(path, step)
    with _manager(root, create=False) as manager:
        return dict(
            manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        )


def restore_checkpoint(
    path: str | os.PathLike, targets: Mapping[str, Any], step: int | None = None
) -> tuple[dict[str, Any], dict]:
    """Restores the items named in `targets` (others are not read) and the metadata.

    Args:
      path: a checkpoint root (the latest step is read) or a step directory.
      targets: item name -> a pytree of `jax.ShapeDtypeStruct` (with `sharding`
        to place each leaf directly) or of arrays like the saved ones.
      step: a step to read instead of the latest.

    Returns:
      ({name: restored pytree}, meta).

    Raises:
      FileNotFoundError: no checkpoint, or no such step (names the path).
      KeyError: an item the checkpoint does not hold (names the ones it holds).
    """
    root, step = _split(path, step)
    held = sorted(p.name for p in (root / str(step)).iterdir() if p.is_dir())
    missing = [name for name in targets if name not in held]
    if missing:
        raise KeyError(f"checkpoint {root / str(step)} has no item {missing}; it holds {held}")
    args = {name: ocp.args.StandardRestore(tree) for name, tree in targets.items()}
    with _manager(root, create=False) as manager:
        out = manager.restore(
            step, args=ocp.args.Composite(**args, **{META: ocp.args.JsonRestore()})
        )
    return {name: out[name] for name in targets}, dict(out[META])


def model_meta(config: ModelConfig) -> dict[str, Any]:
    """A `ModelConfig` as JSON-ready fields (`model_from_meta` inverts it)."""
    fields = dataclasses.asdict(config)
    fields["rope_scaling"] = config.rope_scaling_dict or None
    return fields


def model_from_meta(fields: Mapping[str, Any]) -> ModelConfig:
    """The inverse of `model_meta`; an unknown field is an error naming it."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"checkpoint model config has unknown fields {unknown}")
    return ModelConfig(**fields)


def load_model(
    path: str | os.PathLike,
    role: str = "student",
    *,
    step: int | None = None,
    dtype: str | None = None,
    shardings: Any = None,
    say: Callable[[str], None] | None = None,
) -> tuple[ModelConfig, Any, dict]:
    """Loads one model of a checkpoint: `(config, params, meta)`.

    Args:
      path: a checkpoint root (its newest readable step) or a step directory.
      role: whose params: the item `{role}_params`, config `meta['models'][role]`.
      step: a step to read instead of the newest.
      dtype: override the compute dtype of the returned config.
      shardings: optional pytree of shardings for the params (placed directly);
        default: whole, on this process's first device. The target is always
        built here, from the config and these shardings, never from the
        topology the checkpoint was written on, so a checkpoint of any device
        count, mesh or process count loads (a pod's on one device).
      say: where a line about a damaged newer step goes (default: stderr).

    Raises:
      KeyError: `role` is not in the checkpoint (names the roles it has).
    """
    config, params, meta, _ = load_newest_model(
        path, role, step=step, dtype=dtype, shardings=shardings, say=say
    )
    return config, params, meta


def load_newest_model(
    path: str | os.PathLike,
    role: str = "student",
    *,
    step: int | None = None,
    dtype: str | None = None,
    shardings: Any = None,
    say: Callable[[str], None] | None = None,
) -> tuple[ModelConfig, Any, dict, int]:
    """`load_model` and the step it read: given a root and no `step`, the newest
    step that reads, after one line per damaged newer step (nothing is moved)."""
    root, chosen = _split(path, step)
    if step is not None or Path(path).expanduser().absolute() != root:
        return (*_load_model_step(root, chosen, role, dtype, shardings), chosen)
    say = say or _stderr
    loaded, chosen, skipped = newest_readable(
        root, lambda s: _load_model_step(root, s, role, dtype, shardings), what=f"the {role}"
    )
    for bad, reason in skipped:
        say(f"warning: checkpoint {root / str(bad)} cannot be read ({reason}); using step {chosen}")
    return (*loaded, chosen)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load_model_step(root: Path, step: int, role: str, dtype, shardings):
    meta = read_meta(root, step)
    models = meta.get("models", {})
    if role not in models:
        raise KeyError(f"checkpoint {str(root)!r} has no model {role!r}; it has {sorted(models)}")
    config = model_from_meta(models[role])
    target = nn.meta.unbox(abstract_params(config))
    if shardings is None:
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: here, target)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings
    )
    items, meta = restore_checkpoint(root, {f"{role}_params": target}, step)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    return config, items[f"{role}_params"], meta


# ----- damaged steps -----


class NoReadableCheckpoint(ValueError):
    """Every step of a checkpoint root failed to read (the message names each and why)."""


def newest_readable(
    root: str | os.PathLike, load: Callable[[int], Any], what: str = "the checkpoint"
) -> tuple[Any, int, list[tuple[int, str]]]:
    """`(load(step), step, skipped)` for the newest step of `root` that `load` reads.

    Args:
      root: a checkpoint root.
      load: reads one step; any exception it raises means the step is damaged,
        except a `KeyError` naming what the checkpoint lacks as a whole (a role).
      what: what is read, for the error.

    Returns:
      skipped: `(step, reason)` for each newer step that failed, newest first;
      the full errors go to the `classkd_jax` logger (the run's log file).

    Raises:
      NoReadableCheckpoint: no step reads (nothing is moved or deleted).
    """
    import logging

    steps = all_steps(root)
    if not steps:
        raise FileNotFoundError(f"{str(root)!r} holds no classkd-jax checkpoint")
    skipped = []
    log = logging.getLogger("classkd_jax")
    for step in reversed(steps):
        with stderr_to_log(log) as settle:
            try:
                return load(step), step, skipped
            except Exception as error:  # noqa: BLE001 - damage shows as any error of the readers
                if isinstance(error, KeyError) and "has no model" in str(error):
                    raise
                log.info("checkpoint %s/%d cannot be read", root, step, exc_info=error)
                skipped.append((step, unreadable_reason(error)))
                settle()
    listed = ", ".join(f"{step} ({reason})" for step, reason in skipped)
    raise NoReadableCheckpoint(
        f"no checkpoint restores {what} (nothing was moved or deleted): {listed}; in {root}"
    )


@contextlib.contextmanager
def stderr_to_log(log):
    """Sends `sys.stderr` to `log` while a step is read or written: when a read or a
    write fails, Orbax's other ones still finish on their threads and print
    tracebacks ("Event loop is closed") and "never retrieved" task errors;
    `settle()` waits for them so they land in the log, not on the terminal."""
    import gc
    import io

    saved, hook, buffer = sys.stderr, sys.unraisablehook, io.StringIO()

    def settle() -> None:
        # Failed tasks that are collected later (at exit, say) log "never retrieved"
        # through asyncio's logger: from now on, to this run's log only.
        asyncio_log = logging.getLogger("asyncio")
        asyncio_log.handlers = list(log.handlers) or [logging.NullHandler()]
        asyncio_log.propagate = False
        time.sleep(0.5)
        gc.collect()

    def unraisable(info) -> None:
        buffer.write(
            f"{info.err_msg or 'unraisable'}: {info.exc_type.__name__}: {info.exc_value}\n"
        )

    sys.stderr, sys.unraisablehook = buffer, unraisable
    try:
        yield settle
    finally:
        sys.stderr, sys.unraisablehook = saved, hook
        if buffer.getvalue().strip():
            log.info("while reading a checkpoint:\n%s", buffer.getvalue())


_REASONS = (
    (r"has no item", "a missing item"),
    (r"byte range|OUT_OF_RANGE|not valid for value of size|truncat", "a truncated file"),
    (r"reading array index", "unreadable array data"),
    (r"manifest", "a bad manifest"),
    (r"No such file|NOT_FOUND|does not exist|not found|FileNotFound", "a missing file"),
    (r"JSON|Expecting value|Unterminated|decode", "unreadable metadata"),
    (r"base64|Incorrect padding|zip|npz|pickle", "an unreadable host state"),
    (r"DATA_LOSS|checksum|corrupt|CRC", "corrupted data"),
)


def unreadable_reason(error: BaseException) -> str:
    """Why a step did not read, in a few words ('student_params: a truncated file')."""
    text = f"{type(error).__name__}: {error}"
    reason = next((r for pattern, r in _REASONS if re.search(pattern, text, re.I)), None)
    if reason is None:
        first = " ".join(str(error).split())[:60] or "no message"
        reason = f"{type(error).__name__}: {first}"
    item = re.search(r"/\d+/(\w+?)(?:\.orbax-checkpoint-tmp[^/]*)?/", text)
    return f"{item.group(1)}: {reason}" if item else reason


def set_aside(root: str | os.PathLike, step: int, reason: str) -> Path:
    """Renames the damaged `root/<step>` to `root/<step>.damaged-<reason>` (kept, never
    deleted; not a step for Orbax or `all_steps`); returns the new path."""
    root = Path(root)
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40] or "unreadable"
    target = root / f"{step}.{DAMAGED}-{slug}"
    if target.exists():
        target = root / f"{step}.{DAMAGED}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(root / str(step), target)
    return target
