#!/usr/bin/env bash
# Installs the package with its test extra into .venv and runs the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k losses -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test]" . launch/env.sh
ruff check .
ruff format --check .
python -m pytest "$@"
