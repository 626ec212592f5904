"""Starting JAX through classkd_jax on a machine without an accelerator is quiet,
even with the test extra's CUDA plugin and libtpu installed."""

import os
import subprocess
import sys

import pytest

from classkd_jax import plugins

needs_plugins = pytest.mark.skipif(
    not (plugins.cuda_plugin_installed() or plugins.libtpu_installed()),
    reason="neither the CUDA plugin nor libtpu is installed",
)


def _start(env_update: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update({k: v for k, v in env_update.items() if v is not None})
    code = "import classkd_jax, jax; print(jax.devices()[0].platform)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@needs_plugins
@pytest.mark.skipif(plugins.accelerator_present(), reason="this machine has an accelerator")
def test_no_accelerator_means_cpu_and_no_plugin_chatter():
    result = _start({})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    assert result.stderr == ""  # no CUDA traceback, no libtpu host warnings


@needs_plugins
def test_an_explicit_platform_is_kept():
    result = _start({"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0 and result.stdout.strip() == "cpu"


def test_accelerator_nodes_are_what_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(plugins, "ACCELERATOR_NODES", (str(tmp_path / "accel[0-9]*"),))
    assert not plugins.accelerator_present()
    (tmp_path / "accel0").touch()
    assert plugins.accelerator_present()
