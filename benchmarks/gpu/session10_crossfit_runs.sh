#!/usr/bin/env bash
# Session 10's runs on one 4-GPU host: does training on more patients help, measured without
# touching a patient twice? The 33 validation patients are split into two folds
# (benchmarks/crossfit_caches.py: patient i -> fold i mod 2); for each fold, networks train on the
# 169 training patients plus the other fold's validation patients (185 / 186) and are scored on
# their own held-out fold only (out of sample). Beside them, the same recipes on the 169 training
# patients alone, scored on all 33. Every run has a fixed length and keeps its last epoch (validated
# only there: --val-every beyond the run), so no run's epoch is chosen on the patients it is
# scored on.
#   2D (the shipped s51's recipe, CUDA graphs, EPOCHS_2D cosine):  c0p, c0q / c1p, c1q (fold 0 / 1,
#     two seeds each), cap / cbp (169 patients, two seeds); with the DVH term W = 1 (session 9's
#     h94 / k9x):  c0d / c1d, cad / cbd
#   3D (session 9's h93 recipe: GroupNorm, widths 24-192, slabs of 32, 4 a step, DVH term W = 2 over
#     slabs, EPOCHS_3D cosine):  c03 / c13 (fold 0 / 1); its 169-patient runs are h93 / h91 (session 9)
# GPU 0: c03 beside c0p then c0d; GPU 1: c13 beside c1p then c1d; GPU 2: cap, cad, then c0q; GPU 3:
# cbp, cbd, then c1q (one after the other: two 2D runs take about as long as one 3D run beside them;
# in session 10 c0q / c1q were started by hand with these arguments once GPUs 2 and 3 were free).
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session10_crossfit_runs.sh TIME_LIMIT_S EPOCHS_3D EPOCHS_2D
limit=$1; epochs3=$2; epochs2=$3
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs3" --scan-directions 1 \
  --backend torch --compile --val-every 1000
cf=/tmp/crossfit
if [ ! -e $cf/folds.json ] && ! python3 benchmarks/crossfit_caches.py /tmp/cache/train /tmp/cache/val $cf \
  > $runs/crossfit.log 2>&1; then
  cat $runs/crossfit.log; exit 1
fi
python3 benchmarks/gpu/prebuild_features.py --caches /tmp/cache/train /tmp/cache/val \
  $cf/fold0/train $cf/fold0/heldout $cf/fold1/train $cf/fold1/heldout > $runs/features.log 2>&1
d3="--channels 2d --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3"
d3="$d3 --model-option norm=group --model-channels 24,48,96,192 --dvh-loss 2"  # one line: chain reads it
d2="--epochs $epochs2 --compile-mode reduce-overhead --channels-last --channels 2d"
fold() { echo "--train-cache $cf/fold$1/train --val-cache $cf/fold$1/heldout"; }
chain 0 "c03 103 $d3 $(fold 0)"
chain 0 "c0p 100 $d2 $(fold 0)" "c0d 101 $d2 --dvh-loss 1 $(fold 0)"
chain 1 "c13 113 $d3 $(fold 1)"
chain 1 "c1p 110 $d2 $(fold 1)" "c1d 111 $d2 --dvh-loss 1 $(fold 1)"
chain 2 "cap 120 $d2" "cad 121 $d2 --dvh-loss 1" "c0q 1020 $d2 $(fold 0)"
chain 3 "cbp 130 $d2" "cbd 131 $d2 --dvh-loss 1" "c1q 1031 $d2 $(fold 1)"
sleep 2
echo "started: $(ls $runs/*.log | wc -l) logs"
