#!/usr/bin/env bash
# The main job on a fresh machine: make .venv, install safcore, run the demo audit (cpu profile,
# real BreastMNIST) and print where its report is. Extra arguments go to `python -m safcore demo`,
# e.g. `bash scripts/demo.sh --profile smoke` or `bash scripts/demo.sh --offline`.
set -euo pipefail
# A relative data root is taken from where the command was run (the notebooks run in notebooks/).
if [ -n "${SAFCORE_DATA_ROOT:-}" ]; then
  if [ -d "$SAFCORE_DATA_ROOT" ]; then
    SAFCORE_DATA_ROOT="$(cd "$SAFCORE_DATA_ROOT" && pwd)"; export SAFCORE_DATA_ROOT
  else
    # a fresh machine without ../shared: fall back to medmnist's cache (~/.medmnist), downloading there
    # unless --offline / SAFCORE_OFFLINE=1 forbids it
    echo "note: SAFCORE_DATA_ROOT=$SAFCORE_DATA_ROOT does not exist; using medmnist's cache (~/.medmnist) instead" >&2
    unset SAFCORE_DATA_ROOT
  fi
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${SAFCORE_DATA_ROOT:-}" ] && [ -d "$PWD/../shared/data/medmnist" ]; then
  export SAFCORE_DATA_ROOT="$PWD/../shared/data/medmnist"
fi
exec .venv/bin/python -m safcore demo "$@"
