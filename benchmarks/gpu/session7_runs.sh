#!/usr/bin/env bash
# Session 7's first runs on one 4-GPU host, two trainings per GPU, in the background so they outlive
# the call. Every run: the shipped s51's recipe (compiled PyTorch scan, now with CUDA graphs
# (`--compile-mode reduce-overhead`), weight EMA 0.999, lr 3e-4, 2 warm-up epochs, cosine over
# EPOCHS, Smooth L1 beta 0.01, 2d channels, one scan direction), each run changing one thing:
#   s70, s77  none (seeds 70, 77: this host's control and the spread between seeds)
#   s71  + the neighbouring slices (+-1) of the CT, the PTV map, the possible-dose mask and the
#        three PTV distance maps (32 channels)
#   s72  + the PTV map and the possible-dose mask 2 and 4 slices away, the CT +-1 (30 channels)
#   s73  Mamba-2 also at 64x64 (--mixer-min-level 1)
#   s74  batch 16 (twice the steps)
#   s75  lr 1e-4 (the issue's)
#   s76  4 blocks in the bottleneck (--model-option bottleneck_depth=4)
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session7_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile --compile-mode reduce-overhead \
  --scan-directions 1
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
nb1="ct_prev,ct_next,ptv_map_prev,ptv_map_next,possible_dose_mask_prev,possible_dose_mask_next"
nb1="$nb1,psdm_PTV56_prev,psdm_PTV56_next,psdm_PTV63_prev,psdm_PTV63_next,psdm_PTV70_prev,psdm_PTV70_next"
far="ct_prev,ct_next,ptv_map_prev2,ptv_map_next2,ptv_map_prev4,ptv_map_next4"
far="$far,possible_dose_mask_prev2,possible_dose_mask_next2,possible_dose_mask_prev4,possible_dose_mask_next4"
twod=$(python3 -c "from MambaDoseLib.features import CHANNELS; print(','.join(CHANNELS))")
start 0 s70 70 0.01 --channels 2d
start 0 s73 73 0.01 --channels 2d --mixer-min-level 1
start 1 s71 71 0.01 --channels "$twod,$nb1"
start 1 s77 77 0.01 --channels 2d
start 2 s72 72 0.01 --channels "$twod,$far"
start 2 s75 75 0.01 --channels 2d --lr 1e-4
start 3 s74 74 0.01 --channels 2d --batch-size 16
start 3 s76 76 0.01 --channels 2d --model-option bottleneck_depth=4
sleep 2
echo "started 8 runs"
