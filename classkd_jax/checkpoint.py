"""Training checkpoints: atomic, one directory per step, restorable item by item (Orbax).

Layout: `<directory>/<step>/` holds one Orbax item per entry of `items` (any
pytree of arrays: params, optimizer states, PRNG keys) and a JSON item `meta`.
Orbax writes a step into a temporary directory and renames it when complete, so
a crash never leaves a half-written step that `latest_step` would pick up, and
nothing already written is touched by a later save.

Model convention (what `load_model` and `python -m classkd_jax.generate
--model` read): a model in role R (e.g. 'student', 'teacher', 'classmate')
stores its params as the item `R_params` and its `ModelConfig` as
`meta['models'][R]` (`model_meta`); `meta['tokenizer']`, when present, is the
path of the tokenizer directory that goes with the models.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from classkd_jax.models import ModelConfig, abstract_params

META = "meta"


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
) -> tuple[ModelConfig, Any, dict]:
    """Loads one model of a checkpoint: `(config, params, meta)`.

    Args:
      path: a checkpoint root (latest step) or a step directory.
      role: whose params: the item `{role}_params`, config `meta['models'][role]`.
      step: a step to read instead of the latest.
      dtype: override the compute dtype of the returned config.
      shardings: optional pytree of shardings for the params (placed directly);
        default: whole, on this process's first device. The target is always
        built here, from the config and these shardings, never from the
        topology the checkpoint was written on, so a checkpoint of any device
        count, mesh or process count loads (a pod's on one device).

    Raises:
      KeyError: `role` is not in the checkpoint (names the roles it has).
    """
    meta = read_meta(path, step)
    models = meta.get("models", {})
    if role not in models:
        raise KeyError(f"checkpoint {str(path)!r} has no model {role!r}; it has {sorted(models)}")
    config = model_from_meta(models[role])
    target = nn.meta.unbox(abstract_params(config))
    if shardings is None:
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: here, target)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings
    )
    items, meta = restore_checkpoint(path, {f"{role}_params": target}, step)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    return config, items[f"{role}_params"], meta
