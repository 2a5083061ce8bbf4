#!/usr/bin/env bash
# Session 5's runs on one 4-GPU host, two trainings per GPU, in the background so they outlive the
# call. Every run: session 4's recipe (compiled PyTorch scan, weight EMA 0.999, lr 3e-4, 2 warm-up
# epochs, cosine over EPOCHS) with Smooth L1 beta 0.01 and the 2d channels (session 4's best), and
# one change each:
#   s50, s57  the recipe as it is (two seeds: the seed spread to judge the rest by)
#   s51, s52  one / four scan directions (two is the default): issue 3's quality comparison
#   s53, s54  the sorted DVH loss (`--dvh-loss`) at weight 0.5 / 2 against the too homogeneous
#             target dose of session 4's breakdown
#   s55       a 1.5x wider network (48-96-192-384)
#   s56       wider and the DVH loss at 0.5
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session5_runs.sh TIME_LIMIT_S EPOCHS
source benchmarks/gpu/runs_common.sh "$1" "$2" --backend torch --compile --channels 2d
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
wide="--model-channels 48,96,192,384"
start 0 s50 50 0.01
start 0 s51 51 0.01 --scan-directions 1
start 1 s52 52 0.01 --scan-directions 4
start 1 s53 53 0.01 --dvh-loss 0.5
start 2 s54 54 0.01 --dvh-loss 2
start 2 s55 55 0.01 $wide
start 3 s56 56 0.01 $wide --dvh-loss 0.5
start 3 s57 57 0.01
sleep 2
echo "started 8 runs"
