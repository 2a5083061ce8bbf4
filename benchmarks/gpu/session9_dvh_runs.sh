#!/usr/bin/env bash
# Session 9's runs on one 4-GPU host, two trainings per GPU, in the background so they outlive the
# call: the sorted DVH term (`--dvh-loss W`) on 3D networks, where it now matches each slab's 32
# slices as one volume (3D DVHs), and on 2D networks (per slice, as in session 5), to see whether
# DVH-trained members lower an ensemble's DVH score (session 5's s53 / s54 with the shipped five:
# DVH 1.765 -> 1.739 Gy at the same dose score, benchmarks/results/2026-11-27-session9/).
#   3D (g95's config: GroupNorm, widths 24-192, slabs of 32, 4 a step, EPOCHS_3D cosine, validated
#   every 5th epoch):  h90 DVH 1, h91 DVH 2, h92 DVH 4, h93 DVH 2 (seed 93), h97 no DVH term
#   2D (the shipped s51's recipe, CUDA graphs, EPOCHS_2D cosine): h94 DVH 1, h95 DVH 2,
#   h96 DVH 2 with s71's neighbouring-slice channels
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session9_dvh_runs.sh TIME_LIMIT_S EPOCHS_3D EPOCHS_2D
limit=$1; epochs3=$2; epochs2=$3
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs3" --scan-directions 1 \
  --backend torch --compile
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
d3="--channels 2d --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3
  --model-option norm=group --model-channels 24,48,96,192 --val-every 5"
d2="--epochs $epochs2 --compile-mode reduce-overhead --channels-last"
nb1="ct_prev,ct_next,ptv_map_prev,ptv_map_next,possible_dose_mask_prev,possible_dose_mask_next"
nb1="$nb1,psdm_PTV56_prev,psdm_PTV56_next,psdm_PTV63_prev,psdm_PTV63_next,psdm_PTV70_prev,psdm_PTV70_next"
twod=$(python3 -c "from MambaDoseLib.features import CHANNELS; print(','.join(CHANNELS))")
start 0 h90 90 0.01 $d3 --dvh-loss 1
start 0 h94 94 0.01 $d2 --channels 2d --dvh-loss 1
start 1 h91 91 0.01 $d3 --dvh-loss 2
start 1 h95 95 0.01 $d2 --channels 2d --dvh-loss 2
start 2 h92 92 0.01 $d3 --dvh-loss 4
start 2 h96 96 0.01 $d2 --channels "$twod,$nb1" --dvh-loss 2
start 3 h93 93 0.01 $d3 --dvh-loss 2
start 3 h97 97 0.01 $d3
sleep 2
echo "started 8 runs"
