#!/usr/bin/env bash
# The whole test suite on a fresh machine: make .venv, install safcore with its test extras, run the
# unit tests and every notebook under nbval. Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
# A relative data root is taken from where the command was run (the notebooks run in notebooks/).
if [ -n "${SAFCORE_DATA_ROOT:-}" ] && [ -d "$SAFCORE_DATA_ROOT" ]; then
  SAFCORE_DATA_ROOT="$(cd "$SAFCORE_DATA_ROOT" && pwd)"; export SAFCORE_DATA_ROOT
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SAFCORE_DATA_ROOT="${SAFCORE_DATA_ROOT:-$PWD/../shared/data/medmnist}"
# nbval does not read a kernel's output while a cell runs: thousands of progress-bar redraws in one long
# cell overflow ZeroMQ's queue, the "idle" message is lost and nbval fails with "Timeout ... waiting for
# output". Bars are off under test (safcore/progress.py).
export MPLBACKEND=Agg PYTHONHASHSEED=0 SAFCORE_PROGRESS=0
# Tests never download (safcore/data.py): a flag missing from the data root is an error, not a fetch.
export SAFCORE_OFFLINE=1
# Figures and tables the notebooks write at their test parameters go to the ignored runs/ folder, never over the
# committed ones in figures/ (only scripts/cpu_reports.sh writes there): the checkout stays clean.
export SAFCORE_FIGURES_DIR="${SAFCORE_FIGURES_DIR:-$PWD/runs/test-figures}"
exec .venv/bin/python -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 "$@"
