#!/usr/bin/env bash
# Session 9's second batch, after session9_dvh_runs.sh on the same 4-GPU host: eight 2D runs of the
# shipped s51's recipe (one scan direction, CUDA graphs, EPOCHS cosine) with the sorted DVH term,
# two per GPU: k90, k92, k94, k96 with W = 1 and k91, k93, k95, k97 with W = 0.5 (seed = the number).
# (Run in session 9 as the same lines typed into one device call.)
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session9_dvh2d_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile --compile-mode reduce-overhead \
  --scan-directions 1 --channels 2d
for i in 0 1 2 3; do
  start $i k9$((2 * i)) 9$((2 * i)) 0.01 --dvh-loss 1
  start $i k9$((2 * i + 1)) 9$((2 * i + 1)) 0.01 --dvh-loss 0.5
done
sleep 2
echo "started 8 runs"
