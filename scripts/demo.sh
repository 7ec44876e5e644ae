#!/usr/bin/env bash
# The main job on a fresh machine: make .venv, install safcore, run the demo audit (cpu profile,
# real BreastMNIST) and print where its report is. Extra arguments go to `python -m safcore demo`,
# e.g. `bash scripts/demo.sh --profile smoke`.
set -euo pipefail
# A relative data root is taken from where the command was run (the notebooks run in notebooks/).
if [ -n "${SAFCORE_DATA_ROOT:-}" ] && [ -d "$SAFCORE_DATA_ROOT" ]; then
  SAFCORE_DATA_ROOT="$(cd "$SAFCORE_DATA_ROOT" && pwd)"; export SAFCORE_DATA_ROOT
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SAFCORE_DATA_ROOT="${SAFCORE_DATA_ROOT:-$PWD/../shared/data/medmnist}"
exec .venv/bin/python -m safcore demo "$@"
