#!/usr/bin/env bash
# Session 8's 3D runs on one 4-GPU host, two trainings per GPU, in the background so they outlive
# the call. Every run: the shipped s51's recipe (weight EMA 0.999, lr 3e-4, 2 warm-up epochs, cosine
# over EPOCHS, Smooth L1 beta 0.01, 2d channels, one scan direction) made 3D: `--slab 32
# --model-option conv_dims=3` (each slab of 32 consecutive axial slices one volume through 3D
# convolutions, Mamba-2 over the flattened voxels of its level), GroupNorm, 4 volumes a step (batch
# 128), each run changing one thing:
#   g90, g96  none (seeds 90, 96)
#   g91  BatchNorm
#   g92  2 volumes a step (batch 64)
#   g93  no Mamba (the 3D UNet baseline)
#   g94  slabs of 64 slices, 2 a step
#   g95  widths 24-192 (4.6 M parameters instead of 8.1 M)
#   g97  two scan directions
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session8_3d_runs.sh TIME_LIMIT_S EPOCHS [COMPILE_ARGS...]
limit=$1; epochs=$2; shift 2
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs" --channels 2d \
  --scan-directions 1 --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3 "$@"
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
start 0 g90 90 0.01 --model-option norm=group
start 0 g91 91 0.01
start 1 g92 92 0.01 --model-option norm=group --batch-size 64
start 1 g93 93 0.01 --model-option norm=group --mixer none
start 2 g94 94 0.01 --model-option norm=group --slab 64
start 2 g95 95 0.01 --model-option norm=group --model-channels 24,48,96,192
start 3 g96 96 0.01 --model-option norm=group
start 3 g97 97 0.01 --model-option norm=group --scan-directions 2
sleep 2
echo "started 8 runs"
