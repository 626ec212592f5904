#!/usr/bin/env bash
# Installs the package into .venv and runs the quick-start job (configs/demo.py).
# Extra arguments are config overrides, e.g. `bash launch/demo.sh --config.workdir=/tmp/d`.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/env.sh
python -m classkd_jax.demo --config configs/demo.py "$@"
