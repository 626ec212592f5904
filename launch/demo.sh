#!/usr/bin/env bash
# Installs the package into .venv and runs the quick-start job: ClassKD against SFT
# and GKD from the shipped teacher and student init (classkd_jax/demo.py).
# Extra arguments go to the demo, e.g. `bash launch/demo.sh --workdir /tmp/d --seeds 3`.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/env.sh
python -m classkd_jax.demo "$@"
