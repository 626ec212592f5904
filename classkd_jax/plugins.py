"""JAX's accelerator plugins, imported without their start-up chatter.

With the CUDA plugin installed (the `compile` extra, for compiling for GPUs
from a CPU host), `import jax` and JAX's plugin discovery print "Could not
find cuda drivers on your machine" four times, from C++, straight to file
descriptor 2, on every machine without a GPU. `quiet_import()` (run when
`classkd_jax` is imported, and only when the plugin is installed) and
`discover()` do them with descriptor 2 captured, and pass on every other
line they caught.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator

# What the CUDA stub prints when the machine has no driver.
NOISE = ("cudart_stub.cc", "All log messages before absl::InitializeLog()")


@contextlib.contextmanager
def filtered_stderr(noise: tuple[str, ...] = NOISE) -> Iterator[None]:
    """Captures file descriptor 2; on exit writes back the lines without `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if not any(n in line for n in noise)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def cuda_plugin_installed() -> bool:
    return importlib.util.find_spec("jax_cuda12_plugin") is not None


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


# Device nodes of the accelerators JAX's plugins drive: NVIDIA GPUs, TPU chips
# (/dev/accel* on v2-v4, VFIO groups on v5e and later), AMD GPUs.
ACCELERATOR_NODES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/accel[0-9]*",
                     "/dev/vfio/[0-9]*", "/dev/kfd")  # fmt: skip


def accelerator_present() -> bool:
    """Whether this machine has a GPU or TPU device node (no backend is started)."""
    return any(glob.glob(pattern) for pattern in ACCELERATOR_NODES)


def quiet_import() -> None:
    """Imports jax quietly when the CUDA plugin or libtpu is installed (else
    nothing: jax is imported when first used, as before).

    On a machine with no accelerator device node and no `JAX_PLATFORMS`, the
    default platform becomes 'cpu': otherwise JAX's first backend start tries the
    CUDA plugin (a logged traceback, "Unable to load CUDA") and libtpu (warnings
    about TPU host bounds and worker hostnames) before falling back to the CPU,
    on every command. A machine with a GPU or TPU, or any `JAX_PLATFORMS`, keeps
    JAX's own choice. With `JAX_PLATFORMS` set the plugins register quietly too.
    """
    if "jax" in sys.modules or not (cuda_plugin_installed() or libtpu_installed()):
        return
    if not os.environ.get("JAX_PLATFORMS") and not accelerator_present():
        os.environ["JAX_PLATFORMS"] = "cpu"
    with filtered_stderr():
        import jax  # noqa: F401
    if os.environ.get("JAX_PLATFORMS"):
        discover()


def discover() -> None:
    """Registers JAX's plugins now (it starts no backend), quietly. Under
    `jax_platforms` without 'cuda' the CUDA plugin registers without looking
    for a driver, so it can compile for GPUs on a CPU host."""
    from jax._src import xla_bridge

    register = getattr(xla_bridge, "_discover_and_register_pjrt_plugins", None)
    if register is None:  # pragma: no cover - another JAX version
        return
    with filtered_stderr():
        register()
