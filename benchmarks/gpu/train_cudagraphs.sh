#!/usr/bin/env bash
# Issue 3: training throughput of `mambadose train` itself (weight EMA, augmentation on the GPU,
# validation between epochs) with the compiled network in torch.compile's default mode and with
# CUDA graphs (`--compile-mode reduce-overhead`), one after the other on the same GPU and data.
# The log line's slices/s counts the optimiser steps only; epoch 1 pays the compilation.
# Needs /tmp/cache/{train,val} (and /tmp/feat from earlier runs saves the feature build) and
# `source benchmarks/gpu/setup.sh`.   bash benchmarks/gpu/train_cudagraphs.sh OUT_DIR [SLICES_PER_EPOCH [EPOCHS]]
set -u
out=$1; n=${2:-12800}; epochs=${3:-3}; mkdir -p "$out"
common="--train-cache /tmp/cache/train --val-cache /tmp/cache/val --feature-cache /tmp/feat --lr 3e-4
  --batch-size 32 --channels-last --no-progress --ema 0.999 --warmup-epochs 1 --epochs $epochs
  --slices-per-epoch $n --backend torch --compile --channels 2d --scan-directions 1 --workers 8"
for mode in default reduce-overhead; do
  echo "== --compile-mode $mode ($(date +%T))"
  rm -rf /tmp/cg_$mode
  python3 -m MambaDoseLib.cli train $common --compile-mode $mode --out /tmp/cg_$mode \
    > "$out/train_cudagraphs_$mode.log" 2>&1
  echo "rc $?"
  grep -E "model:|epoch [0-9]+/" "$out/train_cudagraphs_$mode.log"
done
