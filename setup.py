"""classkd-jax: white-box knowledge distillation of language models in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

# Pinned so that a fresh install resolves the same way everywhere: these versions
# were checked together.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "datasets==5.2.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tfds needs it for builders in package modules
    "ml-collections==1.1.0",
    "rouge-score==0.1.2",
    "nltk==3.10.4",  # the Porter stemmer, imported directly by the ROUGE-L scorer
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
]

# Compile-only TPU and GPU backends for `python -m classkd_jax.compile` on a CPU host:
# libtpu (213 MB wheel, 684 MB installed) and the CUDA plugin (182 MB of wheels,
# 478 MB installed; no CUDA libraries, no driver needed).
COMPILE_REQUIRES = [
    "jax[tpu]==0.10.2",
    "jax-cuda12-plugin==0.10.2",
    "jax-cuda12-pjrt==0.10.2",
]

# torch is the numerical reference in tests only. It is pinned to the CPU build
# in the same requirement set as trl, so pip never pulls a CUDA torch.
TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "ruff==0.17.6",
    "torch==2.13.0",
    "trl==1.16.0",
    *COMPILE_REQUIRES,  # tests/test_compile.py compiles for v5e:2x2 and h100:8
]

setup(
    name="classkd-jax",
    version="0.1.0",
    description="Class knowledge distillation (ClassKD) and its baselines in JAX/Flax",
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["classkd_jax", "classkd_jax.*"]),
    package_data={"classkd_jax": ["assets/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        # accelerator builds of jaxlib, for launch/tpu_pod.sh and launch/slurm_gpu.sbatch
        "tpu": ["jax[tpu]==0.10.2"],
        "cuda": ["jax[cuda12]==0.10.2"],
        "compile": COMPILE_REQUIRES,
    },
)
