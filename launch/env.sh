#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment in .venv and
# installs the package into it. Sourced by launch/demo.sh and launch/test.sh.
#   EXTRAS="[test]" . launch/env.sh
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# torch (test extra only) is pinned to the CPU build inside the same install,
# so pip never resolves a CUDA torch.
python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
