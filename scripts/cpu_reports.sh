#!/usr/bin/env bash
# Re-run the notebooks at the cpu profile and keep the executed copies in reports/cpu/ (evidence of the
# memorization findings that the smoke profile is too small to show). ≈ 1.5 h on 2 cores, most of it
# training the score models (N_D = 16, 64, 546 on BreastMNIST; 16 on PneumoniaMNIST and the subset),
# reused from runs/ when they exist.
set -euo pipefail
cd "$(dirname "$0")/.."
export SAFCORE_DATA_ROOT="${SAFCORE_DATA_ROOT:-$PWD/../shared/data/medmnist}" MPLBACKEND=Agg SAFCORE_PROGRESS=0
pm() { .venv/bin/papermill --cwd notebooks "notebooks/$1.ipynb" "reports/cpu/$1.ipynb" -p PROFILE cpu "${@:2}"; }
pm 05_tprime -p N_D 16 -p N_D_LARGE 546
pm 04_dataset_size -y "N_DS: [16, 64, 546]" -p N_SAMPLES 256
pm 03_training_length -p N_D 16 -p N_SAMPLES 128
pm 06_false_positives -p N_D 16
pm 02_classifiers -p N_D 16
pm 07_medmnist_table -p N_D 16
