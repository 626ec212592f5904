"""Compile-only devices of a TPU slice or a GPU node, on a CPU host.

    topo = topology.get("v5e:4x4")        # or "h100:8", "a100:2x8"
    mesh = sharding.make_mesh(data=-1, devices=topo.devices)

TPU slices use libtpu's names (`v4:2x2x1`, `v5e:2x2`, `v5e:4x4`, `v5p:2x2x2`,
`v6e:4x4`, ...) through `jax.experimental.topologies.get_topology_desc` (the
`tpu` extra installs libtpu). GPU nodes are `KIND:COUNT` or
`KIND:NODESxCOUNT` with KIND one of `GPU_KINDS`, built from the
`GpuTargetConfigProto` text files in `classkd_jax/assets/gpu_targets`
(values copied from XLA's per-GPU spec files; the `jax-cuda12-plugin` and
`jax-cuda12-pjrt` wheels compile for them without CUDA or a driver).

The devices compile programs and report their memory; nothing runs on them.
`quiet()` must be called before JAX starts its backends: it keeps libtpu's
start-up warnings off the terminal (`classkd_jax.plugins` the CUDA plugin's).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from classkd_jax.cli import UserError

TARGETS = Path(__file__).with_name("assets") / "gpu_targets"
GPU_KINDS = ("a100", "h100", "h200")
# HBM per device by `device_kind`, for TPUs (compile-only TPU devices report none).
# v5e: the 15.75 GiB the TPU compiler itself gives as the chip's capacity.
TPU_MEMORY_GIB = (
    ("TPU v6 lite", 32.0),
    ("TPU v5 lite", 15.75),
    ("TPU v5", 95.0),
    ("TPU v4", 32.0),
    ("TPU v3", 16.0),
)
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Topology:
    """Attributes:
    name: as given (`v5e:4x4`, `h100:8`).
    platform: 'tpu' or 'cuda'.
    devices: the compile-only devices, in the order a mesh takes them.
    processes: hosts of the slice / nodes (each runs one trainer process).
    device_kind: e.g. 'TPU v5 lite', 'NVIDIA H100 80GB HBM3'.
    memory_bytes: HBM per device.
    """

    name: str
    platform: str
    devices: tuple[Any, ...]
    processes: int
    device_kind: str
    memory_bytes: int


def quiet() -> None:
    """Before JAX's backends start: no libtpu host probing (it warns without these
    variables), no libtpu lock file, and CPU as the default platform (the
    topology's devices are compile-only)."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # any value silences libtpu
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compile-only: no chip is opened, so several processes (tests, a sweep) may
    # load libtpu at once; without this the second fails on /tmp/libtpu_lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from classkd_jax import plugins

    jax.config.update("jax_platforms", "cpu")  # jax read the variable when imported
    plugins.discover()


def _gpu(name: str, kind: str, shape: str) -> Topology:
    from jax.experimental import topologies

    m = re.fullmatch(r"(?:(\d+)x)?(\d+)", shape)
    if m is None:
        raise UserError(f"--topology {name}: expected {kind}:COUNT or {kind}:NODESxCOUNT")
    nodes, per_node = int(m.group(1) or 1), int(m.group(2))
    text = (TARGETS / f"{kind}.txtpb").read_text()
    try:
        topo = topologies.get_topology_desc(
            platform="cuda", topology=f"1x{nodes}x{per_node}", target_config=text
        )
    except Exception as e:  # noqa: BLE001 - the plugin's errors have no common type
        raise UserError(f"--topology {name}: {_first_line(e)}{_gpu_hint(e)}") from None
    memory = int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))
    return _topology(name, "cuda", topo.devices, memory)


def _gpu_hint(error: Exception) -> str:
    from classkd_jax import plugins

    if not plugins.cuda_plugin_installed():
        return " (the CUDA plugin is not installed: pip install -e '.[compile]')"
    return ""


def _tpu(name: str) -> Topology:
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
    except Exception as e:  # noqa: BLE001 - libtpu's errors have no common type
        message = _first_line(e)
        if "tpu" in message.lower() and ("unknown" in message.lower() or "plugin" in message):
            message += " (libtpu is missing: pip install -e '.[compile]')"
        raise UserError(
            f"--topology {name}: {message}; expected a TPU slice such as v5e:2x2, v5e:4x4, "
            f"v5p:2x2x2, v6e:4x4 or a GPU node {', '.join(k + ':8' for k in GPU_KINDS)}"
        ) from None
    kind = topo.devices[0].device_kind
    gib = next((g for k, g in TPU_MEMORY_GIB if kind.startswith(k)), None)
    if gib is None:
        raise UserError(f"--topology {name}: no known memory size for {kind!r}")
    return _topology(name, "tpu", topo.devices, int(gib * GIB))


def _topology(name: str, platform: str, devices, memory: int) -> Topology:
    devices = tuple(devices)
    processes = len({d.process_index for d in devices})
    return Topology(name, platform, devices, processes, devices[0].device_kind, memory)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def get(name: str) -> Topology:
    """The compile-only devices of `name` (see the module docstring); a name
    that is neither a GPU node nor a slice libtpu knows is a `UserError`."""
    kind, sep, shape = name.partition(":")
    if not sep or not shape:
        raise UserError(
            f"--topology {name!r}: expected KIND:SHAPE, e.g. v5e:2x2, v5e:4x4, v5p:2x2x2, "
            f"v6e:4x4 or {', '.join(k + ':8' for k in GPU_KINDS)}"
        )
    if kind.lower() in GPU_KINDS:
        return _gpu(name, kind.lower(), shape)
    return _tpu(name)
