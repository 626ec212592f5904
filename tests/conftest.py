"""Shared test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

# Tests are compile-bound on CPU: LLVM's backend optimisations off (level 0) cut
# XLA:CPU compile times by ~40%. Values are compared within one session, and
# against PyTorch with tolerances well above what the level changes; the
# benchmarks run at the default level.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One persistent compilation cache per test session, inherited by the trainer
# processes the tests start: a program compiled once (a train step, the
# sampler) is not compiled again by the next run of the same config.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="classkd-jax-cache-")
# Cache every program, however quick its compile: the tiny models' programs each
# compile in well under JAX's default 1 s threshold, and the trainer runs of the
# suite rebuild the same ones many times over.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# --- Shared tiny models (models helper) -------------------------------------
import pytest  # noqa: E402

# Before any test module imports jax: with the test extra's CUDA plugin installed,
# `import jax` prints driver messages unless classkd_jax imports it (`plugins`).
import classkd_jax  # noqa: E402, F401


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A 256-token BPE tokenizer dir (pad/bos/eos/unk = 0/1/2/3), HF format."""
    from tests.tiny_hf import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_hf_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A function `family -> Path` of a random tiny HF model dir (cached per family).

    Families: 'gpt2', 'llama', 'qwen2' (and 'llama-rope-scaled', 'llama-biased'); each dir holds
    config.json, model.safetensors and the tiny tokenizer.
    """
    from tests.tiny_hf import build_model

    cache = {}

    def get(family: str):
        if family not in cache:
            out = tmp_path_factory.mktemp(f"tiny_{family}")
            build_model(family, out, tiny_tokenizer_dir)
            cache[family] = out
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_hf_model_dir):
    """A function `family -> (ModelConfig, params)`: `load_hf` of `tiny_hf_model_dir(family)`.

    Loading needs no compile, so prefer it to `init_params` in tests.
    """
    from classkd_jax.models import load_hf

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_hf(tiny_hf_model_dir(family))
        return cache[family]

    return get
