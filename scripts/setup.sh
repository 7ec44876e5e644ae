#!/usr/bin/env bash
# Shared by test.sh and demo.sh: make .venv and install safcore into it with the extras the test command
# needs (notebooks: jupyter kernel, jupytext, papermill, ipywidgets, pandas; test: pytest, nbval; see pyproject.toml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[notebooks,test]"
