#!/usr/bin/env bash
# Session 3's runs on one 4-GPU host, two trainings per GPU (a MambaUNetV2 step leaves the GPU about
# half idle, waiting on kernel launches), started in the background so they outlive the call:
# six runs on the native grids (seeds 20-25; Smooth L1 beta 0.05 or 0.02) and two on the common
# 3.906 mm in-plane grid (--inplane-spacing), each paired with a native run of the same seed and recipe.
# All: weight EMA 0.999, lr 3e-4, 2 warm-up epochs, cosine over EPOCHS, Triton scan.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session3_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2"
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
python3 benchmarks/gpu/prebuild_features.py --inplane-spacing 3.906 >> $runs/features.log 2>&1
start 0 n20 20 0.05
start 0 r20 20 0.05 --inplane-spacing 3.906
start 1 n21 21 0.02
start 1 r21 21 0.02 --inplane-spacing 3.906
start 2 n22 22 0.05
start 2 n23 23 0.02
start 3 n24 24 0.05
start 3 n25 25 0.02
sleep 2
echo "started 8 runs"
