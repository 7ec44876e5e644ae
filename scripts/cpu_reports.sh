#!/usr/bin/env bash
# Re-run the demo and the notebooks at the cpu profile and keep the executed copies in reports/cpu/
# (evidence of the memorization findings that the smoke profile is too small to show). ≈ 1.5 h on 2 cores
# from scratch, most of it training the score models (N_D = 16, 64, 546 on BreastMNIST; 16 on
# PneumoniaMNIST and the subset); about an hour when they are already in runs/ (probes and audit
# samples are recomputed). Run nothing else meanwhile: two heavy jobs on 2 cores slow each other 3-10x.
set -euo pipefail
cd "$(dirname "$0")/.."
export SAFCORE_DATA_ROOT="${SAFCORE_DATA_ROOT:-$PWD/../shared/data/medmnist}" MPLBACKEND=Agg SAFCORE_PROGRESS=0
# the committed figures/ are this script's to write (tests and the test command write theirs under runs/)
export SAFCORE_FIGURES_DIR="$PWD/figures"
# each executed notebook gets a manifest beside it (parameters, revision, time, machine)
pm() {
  .venv/bin/papermill --cwd notebooks "notebooks/$1.ipynb" "reports/cpu/$1.ipynb" -p PROFILE cpu "${@:2}"
  .venv/bin/python -c 'import sys; from safcore.runtime.runs import write_manifest; write_manifest(sys.argv[1], config={"notebook": sys.argv[2], "papermill": sys.argv[3:]}, seed=0)' \
    "reports/cpu/$1.ipynb" "$1" -p PROFILE cpu "${@:2}"
}
# every report is drawn with the profile's current sampler: the committed demo_breastmnist_ND16 and notebooks
# 04-10 predate the fast default (Euler–Maruyama 200; README, "Fast solvers") and come back with it, as
# demo_breastmnist_ND16_dpm2m_sde_t20 was drawn; `safcore audit --sampler euler_maruyama --sample-steps 200` draws the reference
.venv/bin/python -m safcore demo --profile cpu --out reports/cpu/demo_breastmnist_ND16 --overwrite --no-progress
pm 04_dataset_size -y "N_DS: [16, 64, 546]" -p N_SAMPLES 256
.venv/bin/python -m safcore demo --dataset retinamnist --n-dataset 16 --profile cpu --out reports/cpu/demo_retinamnist_ND16 --overwrite --no-progress
pm 07_medmnist_table -p N_D 16 -y "DATASETS: [breastmnist, pneumoniamnist, ../shared/data/extra/pneumonia_subset.npz, retinamnist]"
pm 06_false_positives -p N_D 16
pm 05_tprime -p N_D 16 -p N_D_LARGE 546
pm 02_classifiers -p N_D 16
pm 03_training_length -p N_D 16 -p N_SAMPLES 128
pm 08_audit_your_model -p N_D 16 -p TRAIN_STEPS 2000 -y "WIDTHS: [32, 64, 64]"
pm 09_defences -p N_D 16 -y "CADP_EPSILONS: [.inf, 10000, 1000, 10, 1, 0.1]" -y "DPSGD_EPSILONS: [.inf, 10, 1]"
pm 10_peers -y "N_DS: [16, 64, 546]"
pm 11_audit_monai_and_latent -p N_D 16 -p AE_STEPS 1000 -p DM_STEPS 3000
