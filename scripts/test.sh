#!/usr/bin/env bash
# The whole test suite on a fresh machine: make .venv, install safcore with its test extras, run the
# unit tests and every notebook under nbval. Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SAFCORE_DATA_ROOT="${SAFCORE_DATA_ROOT:-$PWD/../shared/data/medmnist}"
export MPLBACKEND=Agg PYTHONHASHSEED=0
exec .venv/bin/python -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 "$@"
