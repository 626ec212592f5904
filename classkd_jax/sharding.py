"""Mesh and sharding rules: logical axis names -> mesh axes, decided in one place.

Params and the model's main activations carry logical axis names ('batch',
'length', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp', 'vocab', 'layers').
A short rule table maps them to the mesh axes ('data', 'fsdp', 'tensor').
Rules are applied in priority order like `flax.linen.logical_to_mesh_axes`: a
rule takes effect only if its mesh axes are still free in that array, so
'batch' -> ('data', 'fsdp') wins over 'embed' -> 'fsdp' in activations, while
params (which have no 'batch') are sharded over 'fsdp' along 'embed'. Unlike
flax, a logical name with no rule at all is an error (EasyLM's
`match_partition_rules`), never a silent replication.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


# Decoding layouts: how the sampler lays out the models it decodes, once per
# sampling call, before its loop (`decode_rules`). A name listed several times
# falls back to its next entry when the mesh axes do not divide the dimension
# (`logical_to_mesh` skips an indivisible rule), ending in replication.
DECODE_LAYOUTS = ("tensor", "replicated", "train")
_TENSOR_PARALLEL: tuple[MeshAxes, ...] = (("fsdp", "tensor"), "fsdp", "tensor")
REPLICATED_DECODE_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp", "tensor")),
    *((name, None) for name in ("length", "embed", "heads", "kv_heads", "mlp", "vocab")),
    ("head_dim", None),
    ("layers", None),
)


def _attention_axes(mesh: Mesh, models: Sequence[Any]) -> MeshAxes:
    """The widest of `_TENSOR_PARALLEL` that divides the query heads of every
    model (one rule serves all models a program decodes) and whose size their
    KV heads divide or are a multiple of; else None (attention whole).

    Where there are fewer KV heads than shards, each is repeated until there
    are as many (`decode_kv_heads`), so that every device holds the KV head its
    query heads read: split otherwise, XLA would regroup the query heads
    against replicated keys and move the KV cache inside the loop."""
    for axes in _TENSOR_PARALLEL:
        size = math.prod(mesh.shape[a] for a in _as_tuple(axes))
        if all(
            m.num_heads % size == 0 and (m.num_kv_heads % size == 0 or size % m.num_kv_heads == 0)
            for m in models
        ):
            return axes
    return None


def decode_kv_heads(num_kv_heads: int, mesh: Mesh | None, rules: Rules) -> int:
    """The KV heads a model decodes with under `rules`: its own, or as many as the
    'kv_heads' rule's shards when it has fewer (each repeated,
    `classkd_jax.models.repeat_kv_heads`); `decode_rules` only splits KV heads
    over a number of shards that one of the two divides."""
    axes = dict(rules).get("kv_heads") if mesh is not None else None
    shards = math.prod(mesh.shape[a] for a in _as_tuple(axes)) if axes else 1
    return shards if num_kv_heads < shards and shards % num_kv_heads == 0 else num_kv_heads


def decode_rules(
    layout: str,
    mesh: Mesh | None = None,
    models: Sequence[Any] = (),
    rules: Rules = DEFAULT_RULES,
) -> Rules:
    """The logical rules a sampler decodes `models` (`ModelConfig`s) under on `mesh`.

    Args:
      layout: 'tensor' (the default): tensor parallel over every non-data mesh
        axis, `fsdp x tensor`: MLP units and the vocabulary split, query and KV
        heads split alike where the axes divide the query heads (KV heads
        repeated up to the shards when there are fewer, `decode_kv_heads`;
        else attention whole on every device), the embedding dimension whole,
        the batch split over
        'data' only. A decode step then moves activation-sized collectives
        (all-reduces of [B, D] after the attention output and the MLP, the
        logits' softmax statistics), never weights. An MLP or vocabulary the
        axes do not divide falls back to fewer axes, then to replication.
        'replicated': every weight whole on every device, the batch split over
        all of them: no collective in a decode step at all, at the price of a
        full copy of the weights per device (models far smaller than HBM).
        'train': the training layout `rules` (the weights split over 'fsdp'
        along the embedding): every decode step all-gathers every weight.
        Kept to measure against.
      mesh, models: needed by 'tensor' (the heads' divisibility).
      rules: the training rules ('train' returns them).

    Raises:
      ValueError: an unknown layout.
    """
    if layout == "tensor":
        attention = _attention_axes(mesh, models) if mesh is not None else None
        return (
            ("batch", "data"),
            ("length", None),
            ("embed", None),
            ("heads", attention),
            ("kv_heads", attention),
            *((name, axes) for name in ("mlp", "vocab") for axes in (*_TENSOR_PARALLEL, None)),
            ("head_dim", None),
            ("layers", None),
        )
    if layout == "replicated":
        return REPLICATED_DECODE_RULES
    if layout == "train":
        return tuple(rules)
    raise ValueError(f"decode layout {layout!r}; expected one of {DECODE_LAYOUTS}")


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices).

    One size may be -1: it takes the devices the others leave. Axis types are
    `Auto` so `jax.jit` shardings and `with_sharding_constraint` behave as in GSPMD.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh(data={data}, fsdp={fsdp}, tensor={tensor}): at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into a multiple of {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"make_mesh(data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs "
            f"{math.prod(sizes)} devices, have {len(devices)}"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh(
    names: Sequence[str | None],
    rules: Rules = DEFAULT_RULES,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec` of mesh axes.

    Args:
      names: one logical name (or None = replicated) per array dimension.
      rules: (logical name, mesh axes) pairs in priority order.
      shape: optional array shape; with `mesh`, a dimension the chosen mesh axes
        do not divide is left unsharded (e.g. GPT-2's vocabulary of 50257).
      mesh: the mesh, needed only for the divisibility check.

    Raises:
      ValueError: a logical name that no rule mentions.
    """
    known = {name for name, _ in rules}
    unknown = [n for n in names if n is not None and n not in known]
    if unknown:
        raise ValueError(f"logical axis names {unknown} (of {tuple(names)}) match no sharding rule")
    result: list[tuple[str, ...] | None] = [None] * len(names)
    used: set[str] = set()
    for rule_name, mesh_axes in rules:
        if rule_name not in names:
            continue
        pos = list(names).index(rule_name)
        axes = _as_tuple(mesh_axes)
        if result[pos] is not None or used & set(axes):
            continue
        if shape is not None and mesh is not None:
            missing = [a for a in axes if a not in mesh.shape]
            if missing:
                raise ValueError(
                    f"rule {rule_name!r} -> {axes} names mesh axes {missing} that the mesh "
                    f"{dict(mesh.shape)} lacks; build it with classkd_jax.sharding.make_mesh"
                )
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[pos] % size:
                continue
        result[pos] = axes
        used |= set(axes)
    spec = [None if not a else (a[0] if len(a) == 1 else a) for a in result]
    return PartitionSpec(*spec)


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """`NamedSharding`s for params whose leaves carry logical names.

    Args:
      abstract_params: a pytree with `nn.Partitioned` leaves, e.g.
        `classkd_jax.models.abstract_params(config)` (boxed `jax.eval_shape`).
      mesh: the device mesh.
      rules: the logical rules.

    Returns:
      The same tree structure with plain (unboxed) leaves replaced by `NamedSharding`s.

    Raises:
      ValueError: naming the param path of a leaf with no logical names, or a
        logical name no rule matches.
    """

    def one(path, leaf):
        where = jax.tree_util.keystr(path)
        if not isinstance(leaf, nn.Partitioned):
            raise ValueError(f"param {where} carries no logical axis names (nn.Partitioned)")
        try:
            spec = logical_to_mesh(leaf.names, rules, np.shape(leaf.value), mesh)
        except ValueError as e:
            raise ValueError(f"param {where}: {e}") from None
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one, abstract_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def logical_sharding(
    names: Sequence[str | None],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    shape: Sequence[int] | None = None,
) -> NamedSharding:
    """The `NamedSharding` of an array (batch, activations) from its logical names."""
    return NamedSharding(mesh, logical_to_mesh(names, rules, shape, mesh))


def cache_shardings(cache: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Shardings of a `KVCache` (or its `jax.eval_shape`), field by field (per layer
    for keys and values)."""
    from classkd_jax.models.cache import CACHE_AXES

    def field_sharding(field: str, value: Any) -> Any:
        names = CACHE_AXES[field]
        return jax.tree.map(lambda a: logical_sharding(names, mesh, rules, np.shape(a)), value)

    fields = {field: field_sharding(field, getattr(cache, field)) for field in CACHE_AXES}
    return type(cache)(**fields)


def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also works on a mesh spanning processes.

    On one process it is exactly `jax.device_put`. When the shardings span
    several processes, a leaf that is a global array is resharded, and any
    other leaf (numpy, or a jax array on this process) must hold the SAME full
    value on every process (e.g. params every host loaded from the same
    checkpoint): each process places the shards its devices own.

    Args:
      tree: a pytree of arrays.
      shardings: a pytree of `Sharding`s matching `tree`, or a prefix of it.
    """
    is_sharding = lambda s: isinstance(s, jax.sharding.Sharding)
    if all(s.is_fully_addressable for s in jax.tree.leaves(shardings, is_leaf=is_sharding)):
        return jax.device_put(tree, shardings)

    def place(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # a global array: reshard
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = place(jax.random.key_data(x), sharding)  # typed keys: place their bits
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(
        lambda s, sub: jax.tree.map(lambda x: place(x, s), sub),
        shardings,
        tree,
        is_leaf=is_sharding,
    )


def fetch(tree: Any) -> Any:
    """`jax.device_get` that also gathers arrays sharded over several processes:
    every process gets the full numpy values."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Turns on the model's activation constraints (`nn.with_logical_constraint`).

    Inside this context, jit-traced model calls constrain their activations to the
    mesh by the same rules as the params. Without it they are no-ops.
    """
    with jax.set_mesh(mesh), logical_rules(rules):
        yield


def logical_rules(rules: Rules) -> contextlib.AbstractContextManager:
    """Switches the rules of the model's activation constraints; usable while
    tracing (inside `jax.jit`, under an `activation_sharding` mesh), e.g. for
    a decode loop that runs under other rules than the program around it."""
    return nn.logical_axis_rules(tuple((name, axes) for name, axes in rules))


def mesh_jit(fn: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)` whose calls always trace and run under `mesh` and
    the logical rules (`activation_sharding`), so the models' activation and
    weight-gathering constraints apply in every program built this way.

    A program traced without them is still correct, but XLA's partitioner then
    picks its own layouts: full copies of activations (the 'involuntary full
    rematerialization' warning) and, on CPU processes joined by gloo, independent
    collectives that two processes can issue in different orders (a
    'collective mismatch' abort). Build every multi-device program with this.
    The jitted object is `.jitted` (for `.lower(...)`).
    """
    jitted = jax.jit(fn, **jit_kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding(mesh, rules):
            return jitted(*args, **kwargs)

    call.jitted = jitted
    return call
