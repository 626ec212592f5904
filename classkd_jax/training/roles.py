"""The run's models by role: where each one's weights come from, checked before anything loads.

A role's config block (`configs/_base.py`, `_model`) names a source:
  path ''                        the preset (`preset`, `shape`) with random init,
                                 its vocabulary the tokenizer's (an empty
                                 `classmate.path`: the student's initial weights);
  a Hugging Face directory       config.json + *.safetensors (or a hub repo id on
                                 machines that reach the hub);
  a classkd-jax checkpoint       root or step directory; `checkpoint_role` picks
                                 the model in it (a run's trained model is 'student').
`plan_roles` reads only configs (no weights) and checks what would fail
later: missing paths, a teacher whose tokenizer differs from the student's
(padded heads over one tokenizer are fine), a head narrower than the
tokenizer, a context too short for the configured lengths. `load_params`
then materialises each role directly in its shardings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from classkd_jax import checkpoint, sharding
from classkd_jax.cli import UserError
from classkd_jax.data import synthetic_tokenizer_path
from classkd_jax.models import ModelConfig, abstract_params, get_preset, load_hf, load_tokenizer
from classkd_jax.models.hf_io import resolve_hf_dir
from classkd_jax.models.layers import INIT_STDDEV, norm_scale_init
from classkd_jax.training import objectives
from classkd_jax.training.state import params_shardings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclasses.dataclass(frozen=True)
class RoleSource:
    """Where a role's weights come from (no weights read yet).

    Attributes:
      role: 'teacher', 'student' or 'classmate'.
      kind: 'random', 'hf', 'checkpoint' or 'student_init' (the classmate's default).
      path: the directory ('' for random init).
      config: the model config the role will have.
      tokenizer_dir: the tokenizer that came with the weights, if any.
      checkpoint_role: the model's role inside a classkd-jax checkpoint.
    """

    role: str
    kind: str
    path: str
    config: ModelConfig
    tokenizer_dir: str | None = None
    checkpoint_role: str = ""

    def describe(self) -> str:
        where = {"random": "random init", "student_init": "the student's initial weights"}
        return where.get(self.kind, self.path)


def _key(role: str, field: str) -> str:
    return f"{role}.{field}"


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def _is_hub_name(path: str) -> bool:
    return (
        bool(path)
        and not Path(path).expanduser().exists()
        and path.count("/") <= 1
        and not (path.startswith((".", "/", "~")))
    )


@dataclasses.dataclass(frozen=True)
class ConfigVocab:
    """A tokenizer's size and special ids read off a model config: what compiling a
    run needs of a hub tokenizer, without reaching the hub (`offline=True`)."""

    size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    def __len__(self) -> int:
        return self.size

    @classmethod
    def of(cls, config: ModelConfig) -> ConfigVocab:
        eos = config.eos_token_ids[0] if config.eos_token_ids else None
        return cls(config.vocab_size, config.bos_token_id, eos, config.pad_token_id)


def resolve_tokenizer(config, offline: bool = False) -> tuple[Any, str]:
    """(tokenizer, where it came from): `tokenizer` if set, else the student's
    directory's (HF dir or the checkpoint's), else the shipped synthetic one.

    `offline`: a hub name is not fetched; its size and ids come from the
    student's preset (`ConfigVocab`)."""
    if config.tokenizer:
        path = Path(config.tokenizer).expanduser()
        if not path.is_dir() and not _is_hub_name(config.tokenizer):
            raise UserError(f"tokenizer={config.tokenizer}: no such tokenizer directory")
        if offline and not path.is_dir():
            return _preset_vocab(config.student), f"{config.tokenizer} (size from a preset)"
        return load_tokenizer(config.tokenizer), str(config.tokenizer)
    student = config.student.path
    if student:
        path = Path(student).expanduser()
        if checkpoint.is_checkpoint(path):
            meta = checkpoint.read_meta(path)
            tok = meta.get("tokenizer")
            if not tok or not Path(tok).is_dir():
                raise UserError(
                    f"student.path={student} is a checkpoint whose tokenizer {tok!r} is not "
                    "a directory here; pass --config.tokenizer=DIR"
                )
            return load_tokenizer(tok), tok
        if path.is_dir():
            if not _has_tokenizer(path):
                raise UserError(
                    f"student.path={student} has no tokenizer files ({', '.join(TOKENIZER_FILES)}"
                    "); pass --config.tokenizer=DIR"
                )
            return load_tokenizer(path), str(path)
        if _is_hub_name(student):
            if offline:
                return _preset_vocab(config.student), f"{student} (size from a preset)"
            return load_tokenizer(student), student
    path = synthetic_tokenizer_path()
    return load_tokenizer(path), str(path)


def resolve_teacher_tokenizer(config, offline: bool = False) -> tuple[Any, str] | None:
    """(the teacher's own tokenizer, where it came from) when `teacher.tokenizer`
    names one (cross-tokenizer KD), else None (the teacher shares the student's).

    `offline`: a hub name is read from the Hugging Face cache only. Unlike the
    student's (`resolve_tokenizer`), a preset's size cannot stand in for it:
    the host alignment and the teacher's scored vocabulary need its vocabulary."""
    name = config.teacher.tokenizer
    if not name or config.method == "sft":
        return None
    if not Path(name).expanduser().is_dir() and not _is_hub_name(name):
        raise UserError(f"teacher.tokenizer={name}: no such tokenizer directory")
    if offline and not Path(name).expanduser().is_dir():
        try:
            return load_tokenizer(name, local_files_only=True), str(name)
        except (OSError, ValueError):
            raise UserError(
                f"teacher.tokenizer={name} is not in the Hugging Face cache: compiling needs "
                "the teacher's tokenizer locally (a directory, or the hub name downloaded once)"
            ) from None
    return load_tokenizer(name), str(name)


def _preset_vocab(role_cfg) -> ConfigVocab:
    try:
        return ConfigVocab.of(get_preset(role_cfg.preset))
    except ValueError as e:
        raise UserError(f"{role_cfg.path}: {e}") from None


def _random_config(role_cfg, tokenizer, context: int) -> ModelConfig:
    shape = {k: v for k, v in role_cfg.shape.items() if v is not None}
    shape.setdefault("max_position_embeddings", context)
    try:
        return get_preset(
            role_cfg.preset,
            **shape,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            dtype=role_cfg.dtype,
            param_dtype=role_cfg.param_dtype,
            remat=role_cfg.remat,
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"preset {role_cfg.preset!r} with shape overrides {shape}: {e}") from None


def _hf_config(path: Path) -> ModelConfig:
    config = ModelConfig.from_hf_config(json.loads((path / "config.json").read_text()))
    generation = path / "generation_config.json"
    if generation.is_file():  # as transformers' generate: EOS ids from here first
        eos = json.loads(generation.read_text()).get("eos_token_id")
        if eos is not None:
            config = config.replace(eos_token_id=eos)
    return config


def _source(role: str, role_cfg, tokenizer, context: int, offline: bool = False) -> RoleSource:
    path_str = role_cfg.path
    if not path_str:
        return RoleSource(role, "random", "", _random_config(role_cfg, tokenizer, context))
    path = Path(path_str).expanduser()
    dtypes = dict(dtype=role_cfg.dtype, param_dtype=role_cfg.param_dtype, remat=role_cfg.remat)
    if offline and not path.exists() and _is_hub_name(path_str):  # the preset's shapes
        try:
            config = get_preset(role_cfg.preset, **dtypes)
        except ValueError as e:
            raise UserError(f"{_key(role, 'preset')}: {e}") from None
        return RoleSource(role, "hub", path_str, config)
    if checkpoint.is_checkpoint(path):
        meta = checkpoint.read_meta(path)
        models = meta.get("models", {})
        which = role_cfg.checkpoint_role
        if which not in models:
            raise UserError(
                f"{_key(role, 'path')}={path_str} has no model {which!r} "
                f"({_key(role, 'checkpoint_role')}); it has {sorted(models)}"
            )
        config = checkpoint.model_from_meta(models[which]).replace(**dtypes)
        return RoleSource(role, "checkpoint", str(path), config, meta.get("tokenizer"), which)
    if path.is_dir() or _is_hub_name(path_str):
        try:
            local = resolve_hf_dir(path_str)
        except FileNotFoundError as e:
            raise UserError(f"{_key(role, 'path')}={path_str}: {e}") from None
        config = _hf_config(local).replace(**dtypes)
        tok = str(local) if _has_tokenizer(local) else None
        return RoleSource(role, "hf", str(local), config, tok)
    raise UserError(
        f"{_key(role, 'path')}={path_str}: no such directory (expected a Hugging Face model "
        "directory, a hub repo id, or a classkd-jax checkpoint)"
    )


def _same_tokenizer(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def scored_vocab(tokenizer, head_sizes: Sequence[int]) -> int:
    """The tokenizer's real vocabulary that every head scores: `len(tokenizer)`,
    or the narrowest head's width where every id past it is a special token no
    text produces (Gemma 3's `<image_soft_token>` at 262144, which
    Gemma-3-1B's 262144-row head lacks and the 4B+ 262208-row heads have).
    A head narrower than that is `_check_vocab`'s error."""
    size, narrow = len(tokenizer), min(head_sizes)
    if size <= narrow:
        return size
    special = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
    return narrow if all(i in special for i in range(narrow, size)) else size


def _check_vocab(source: RoleSource, tokenizer, tokenizer_where: str) -> None:
    size = scored_vocab(tokenizer, [source.config.vocab_size])
    if (
        source.tokenizer_dir
        and Path(source.tokenizer_dir).resolve() != Path(tokenizer_where).resolve()
    ):
        own = load_tokenizer(source.tokenizer_dir)
        if not _same_tokenizer(own, tokenizer):
            hint = (
                ": set teacher.tokenizer to it for cross-tokenizer KD (method=kd)"
                if source.role == "teacher"
                else "; the classmate shares the student's tokenizer"
            )
            raise UserError(
                f"the {source.role}'s tokenizer ({source.tokenizer_dir}, {len(own)} tokens) is not "
                f"the one it is run with ({tokenizer_where}, {size} tokens){hint}"
            )
    if source.config.vocab_size < size:
        raise UserError(
            f"the {source.role} ({source.describe()}) has an output head of "
            f"{source.config.vocab_size} tokens, fewer than the tokenizer's {size} "
            f"({tokenizer_where}; special tokens past the head excepted): it was built for "
            "another tokenizer"
        )


def _check_context(source: RoleSource, context: int, why: str) -> None:
    if source.config.max_position_embeddings < context:
        raise UserError(
            f"the {source.role} ({source.describe()}) has a context of "
            f"{source.config.max_position_embeddings} tokens, less than the {context} the run "
            f"needs ({why}); lower those lengths"
        )


def plan_roles(
    config,
    tokenizer,
    tokenizer_where: str,
    context: int,
    why: str,
    offline: bool = False,
    teacher_tokenizer: tuple[Any, str] | None = None,
) -> dict:
    """{role: RoleSource} for the roles `config.method` uses, checked (see module docstring).

    `offline`: a hub name is not resolved; the role gets its preset's shapes
    (`<role>.preset`, kind 'hub'), as `classkd_jax.compile` needs.
    `teacher_tokenizer`: (tokenizer, where) of a teacher with its own tokenizer
    (`resolve_teacher_tokenizer`), which its weights are checked against instead."""
    toks = {"teacher": teacher_tokenizer} if teacher_tokenizer is not None else {}
    roles = ["student"]
    if config.method != "sft":
        roles.insert(0, "teacher")
    if objectives.has_classmate(config):  # ClassKD, or a sampling baseline's `+mf`
        roles.append("classmate")
    sources = {}
    for role in roles:
        role_cfg = config[role]
        if role == "classmate" and not role_cfg.path:
            student = sources["student"]
            cm_config = student.config.replace(
                dtype=role_cfg.dtype, param_dtype=role_cfg.param_dtype, remat=role_cfg.remat
            )
            sources[role] = RoleSource(role, "student_init", student.path, cm_config)
            continue
        role_tok = toks.get(role, (tokenizer, tokenizer_where))[0]
        sources[role] = _source(role, role_cfg, role_tok, context, offline)
    for role, source in sources.items():
        rate = config[role].get("dropout")
        if rate is not None:  # a trained role's override of its model's dropout
            if not 0.0 <= rate < 1.0:
                raise UserError(f"{_key(role, 'dropout')}={rate}: expected a rate in [0, 1)")
            sources[role] = dataclasses.replace(source, config=source.config.with_dropout(rate))
    for source in sources.values():
        _check_vocab(source, *toks.get(source.role, (tokenizer, tokenizer_where)))
        _check_context(source, context, why)
    return sources


def host_init(config: ModelConfig, seed: Sequence[int]) -> Any:
    """Random-init params drawn on the host: N(0, 0.02) weights, unit norm scales
    (zero for Gemma's), zero biases (the distributions of `classkd_jax.models.init_params`).

    numpy rather than a jitted init: no compile (a jitted threefry init of even
    a tiny model compiles for seconds on CPU), and the values depend only on
    `seed`, not on the mesh the params are then placed on.
    """
    rng = np.random.default_rng(list(seed))
    dtype = np.dtype(config.params_dtype)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":  # 1, or 0 for Gemma's (1 + w) norms
            return np.full(leaf.shape, norm_scale_init(config), dtype)
        if name == "bias":
            return np.zeros(leaf.shape, dtype)
        return (INIT_STDDEV * rng.standard_normal(leaf.shape, np.float32)).astype(dtype)

    abstract = nn.meta.unbox(abstract_params(config))
    return jax.tree_util.tree_map_with_path(draw, abstract)


def load_params(source: RoleSource, mesh, seed: Sequence[int]) -> Any:
    """The role's params, placed in the training shardings (no full copy on one device)."""
    shardings = params_shardings(source.config, mesh)
    if source.kind == "random":
        return sharding.put(host_init(source.config, seed), shardings)
    if source.kind == "hf":
        _, params = load_hf(
            source.path,
            dtype=source.config.dtype,
            param_dtype=source.config.param_dtype,
            shardings=shardings,
        )
        return params
    if source.kind == "checkpoint":
        _, params, _ = checkpoint.load_model(
            source.path, source.checkpoint_role, shardings=shardings
        )
        return jax.tree.map(lambda x: x.astype(source.config.params_dtype), params)
    raise ValueError(f"cannot load {source.kind!r} weights directly")


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
