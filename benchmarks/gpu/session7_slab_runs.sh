#!/usr/bin/env bash
# Session 7's slab-mode runs on one 4-GPU host (after session7_runs.sh on the same machine: caches and
# 2d feature files in place), two per GPU, in the background. The s51 recipe with CUDA graphs as in
# session7_runs.sh, and `--slab K`: every Mamba-2 layer scans the tokens of K consecutive axial
# slices of one patient as one sequence (3D context); two scan directions so that it runs both
# ways along the slice axis unless said otherwise. s86 is the no-slab control with two directions.
#   bash benchmarks/gpu/session7_slab_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile --compile-mode reduce-overhead \
  --channels 2d --scan-directions 2
start 0 s80 80 0.01 --slab 4
start 0 s81 81 0.01 --slab 8
start 1 s82 82 0.01 --slab 16
start 1 s83 83 0.01 --slab 8 --scan-directions 1
start 2 s84 84 0.01 --slab 8
start 2 s85 85 0.01 --slab 2
start 3 s86 86 0.01
start 3 s87 87 0.01 --slab 32 --batch-size 64
sleep 2
echo "started 8 runs"
