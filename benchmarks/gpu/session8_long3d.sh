#!/usr/bin/env bash
# Session 8, after the eight 3D runs: one 3D MambaUNetV2 of g95's config (widths 24-192, GroupNorm,
# slabs of 32, 4 a step) alone on one GPU for a longer cosine (EPOCHS), validating every 5th epoch:
# does the 3D network gain from more epochs? (every run of session8_3d_runs.sh was best at its last)
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session8_long3d.sh TIME_LIMIT_S EPOCHS
limit=$1; epochs=$2
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs" --channels 2d \
  --scan-directions 1 --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3 \
  --backend torch --compile --val-every 5
start 0 g98 98 0.01 --model-option norm=group --model-channels 24,48,96,192
sleep 2
echo "started g98"
