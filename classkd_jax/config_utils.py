"""Helpers for `configs/*.py` files (big_vision's pattern).

Each config file defines `get_config(arg=None)` returning a locked
`ml_collections.ConfigDict`. Variants are chosen through the argument
(`--config configs/x.py:size=tiny,method=gkd`) and parsed with `parse_arg`;
leaves are overridden by flags (`--config.student.lr=1e-5`).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections


def _coerce(value: str, like: Any) -> Any:
    """Converts the string `value` to the type of the default `like`."""
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if like is None:
        return value
    return type(like)(value)


def parse_arg(arg: str | None, lazy: bool = False, **spec: Any) -> ml_collections.ConfigDict:
    """Parses a config argument like `size=tiny,seed=3` against defaults.

    Args:
      arg: the string after `:` in `--config file.py:arg`, or None.
      lazy: if True, keys not in `spec` are kept as strings; otherwise an
        unknown key is an error that names it and the known keys.
      **spec: the known keys and their defaults (the default's type decides how
        the value is parsed). A bare `name` (no `=`) sets a bool key to True.

    Returns:
      A ConfigDict with every key of `spec`, overridden by `arg`.
    """
    result = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return result
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in spec:
            if not lazy:
                raise ValueError(
                    f"unknown config argument {key!r} in {arg!r}; known: {sorted(spec)}"
                )
            result[key] = value
            continue
        if not sep:
            if not isinstance(spec[key], bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            result[key] = True
            continue
        try:
            result[key] = _coerce(value, spec[key])
        except ValueError as e:
            raise ValueError(f"config argument {key}={value!r}: {e}") from None
    return result


def import_sibling(config_file: str, name: str) -> ModuleType:
    """Imports `configs/<name>.py` next to `config_file` (a config's `__file__`).

    Config files are loaded by path (`--config configs/gkd.py`), not as a
    package, so the shared pieces (`_base.py`, `data.py`) are imported by
    path too; the module is cached under `classkd_jax_configs.<name>`.
    """
    path = Path(config_file).resolve().with_name(f"{name}.py")
    key = f"classkd_jax_configs.{name}"
    module = sys.modules.get(key)
    if module is not None and Path(module.__file__).resolve() == path:
        return module
    if not path.is_file():
        raise FileNotFoundError(f"config helper {path} not found (imported by {config_file})")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


# Other trainers' names for keys this project spells differently (a hint's search terms).
ALIASES = {"learning_rate": "lr", "optim": "", "optimizer": "", "opt": "", "optax": ""}


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a `path.py[:arg]` spec, as `--config` loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("classkd_jax_configs._loaded", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def with_changes(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted leaves replaced (`{'student.lr': 1e-4}`),
    locked as the original was; a new leaf may be added to an existing group."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for key, value in changes.items():
            section, _, leaf = key.rpartition(".")
            target = config
            for part in section.split(".") if section else ():
                target = target[part]
            target[leaf] = value
    return config


def dotted_keys(config: Any, prefix: str = "") -> list[str]:
    """Every leaf of a nested config, dotted ('student.lr', ...)."""
    out = []
    for key, value in config.items():
        if hasattr(value, "items"):
            out += dotted_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def describe_missing_key(config: Any, dotted: str, n: int = 3) -> str:
    """'optim.learning_rate (no key 'optim' in the config; nearest: student.lr, ...)'.

    Args:
      config: the config the key was looked up in.
      dotted: the whole dotted key of an override.
      n: how many existing keys to suggest.
    """
    parts = dotted.split(".")
    node, where = config, "the config"
    for i, part in enumerate(parts):
        if not hasattr(node, "items") or part not in node:
            if hasattr(node, "items"):
                missing = f"no key {part!r} in {where}"
            else:
                missing = f"{'.'.join(parts[:i])} is a value, not a group"
            break
        node, where = node[part], ".".join(parts[: i + 1])
    else:
        return dotted
    keys = dotted_keys(config)
    query = ".".join(a for a in (ALIASES.get(p, p) for p in parts) if a) or dotted
    leaf = query.split(".")[-1]
    near = difflib.get_close_matches(query, keys, n, 0.6)
    near += [k for k in keys if k.split(".")[-1] == leaf and k not in near]
    if not near:
        near = sorted(keys, key=lambda k: -difflib.SequenceMatcher(None, query, k).ratio())
    return f"{dotted} ({missing}; nearest: {', '.join(near[:n])})"
