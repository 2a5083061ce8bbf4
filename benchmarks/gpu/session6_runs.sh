#!/usr/bin/env bash
# Session 6's first runs on one GPU, four trainings side by side, in the background so they outlive
# the call. Every run: session 5's recipe (compiled PyTorch scan, weight EMA 0.999, lr 3e-4, 2
# warm-up epochs, cosine over EPOCHS, Smooth L1 beta 0.01, 2d channels) with one scan direction
# (the shipped s51's), and regularisation against session 5's measured generalisation gap
# (training patients 1.65 Gy, validation 2.86 Gy):
#   s60  channel dropout 0.1 in the bottleneck and decoder (`--model-option dropout=0.1`)
#   s61  stronger augmentation: rotation, scaling and shift each with p 0.6 (0.3 before), up to
#        15 degrees (10), scale 0.85-1.15 (0.9-1.1), shift 8 % (5 %)
#   s62  both
#   s63  dropout 0.2 and the stronger augmentation
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session6_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile --channels 2d --scan-directions 1
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
strong="--rotate-p 0.6 --rotate-deg 15 --scale-p 0.6 --scale-range 0.85,1.15 --shift-p 0.6 --shift-frac 0.08"
start 0 s60 60 0.01 --model-option dropout=0.1
start 0 s61 61 0.01 $strong
start 0 s62 62 0.01 --model-option dropout=0.1 $strong
start 0 s63 63 0.01 --model-option dropout=0.2 $strong
sleep 2
echo "started 4 runs"
