#!/usr/bin/env bash
# Session 4's runs on one 4-GPU host, two trainings per GPU, in the background so they outlive the
# call. Every run: the PyTorch scan compiled with the whole network (`--backend torch --compile`:
# 1.96x the eager Triton step on one H100 in benchmarks/results/2026-11-27-session4), weight EMA
# 0.999, lr 3e-4, 2 warm-up epochs, cosine over EPOCHS. The grid: Smooth L1 beta 0.02 / 0.01 /
# 0.005 (session 3: 0.02 beat 0.05) x input channels 2d / 2.5d (+ ct_prev, ct_next), plus a
# second seed of 2d and 2.5d at beta 0.01.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session4_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
python3 benchmarks/gpu/prebuild_features.py --channels 2.5d >> $runs/features.log 2>&1
start 0 c30 30 0.02 --channels 2d
start 0 c31 31 0.01 --channels 2d
start 1 c32 32 0.005 --channels 2d
start 1 c33 33 0.02 --channels 2.5d
start 2 c34 34 0.01 --channels 2.5d
start 2 c35 35 0.005 --channels 2.5d
start 3 c36 36 0.01 --channels 2d
start 3 c37 37 0.01 --channels 2.5d
sleep 2
echo "started 8 runs"
