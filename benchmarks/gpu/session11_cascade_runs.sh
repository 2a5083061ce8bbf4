#!/usr/bin/env bash
# Session 11's runs on one 4-GPU host: a two-stage cascade. A second network is given the first
# stage's predicted dose (feature channel prior_dose, and its neighbouring slices) beside the usual
# 2D channels and learns to correct it. The first-stage dose of every training patient comes from a
# network that did not train on that patient (otherwise the second stage would learn to trust a
# dose far better than it will ever see on new patients):
#   1. the 169 training patients dealt into 4 folds (crossfit_caches.py - TRAIN OUT --folds 4);
#      one first-stage network per fold (f0-f3: the shipped s51's 2D recipe, EPOCHS1-epoch cosine,
#      on the other 3 folds' ~127 patients, scored at its last epoch on its own held-out fold);
#   2. cascade_priors.py: each fold's held-out patients get that fold's network's dose; the
#      validation patients get the mean of the four networks' doses (val_prior), and each network's
#      own dose (val0-val3, to score the cascade with a single network's dose in front);
#   3. eight second-stage runs, two per GPU, on those caches (same recipe, EPOCHS2-epoch cosine,
#      fixed length, validated at the last epoch only): a1-a3 prior_dose with the slices above and
#      below, b1-b2 prior_dose alone, c1 with two slices each side, d1-d2 as a with the DVH term W = 1.
# Everything runs in the background (setsid nohup) and ends by writing /tmp/runs/cascade.done.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session11_cascade_runs.sh TIME_LIMIT_S EPOCHS1 EPOCHS2
limit=$1; epochs1=$2; epochs2=$3
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs1" --scan-directions 1 \
  --backend torch --compile --val-every 1000
cc=/tmp/cascade; mkdir -p $cc
d2="--compile-mode reduce-overhead --channels-last --loss-beta 0.01"
p0="2d,prior_dose"
p1="2d,prior_dose_prev,prior_dose,prior_dose_next"
p2="2d,prior_dose_prev2,prior_dose_prev,prior_dose,prior_dose_next,prior_dose_next2"
train="python3 -m MambaDoseLib.cli train $common $d2"
cat > $cc/pipeline.sh <<EOF
set -x
python3 benchmarks/crossfit_caches.py - /tmp/cache/train $cc/folds --folds 4 || exit 1
python3 benchmarks/gpu/prebuild_features.py --workers 48 --caches $cc/folds/fold{0,1,2,3}/train \
  $cc/folds/fold{0,1,2,3}/heldout || exit 1
for k in 0 1 2 3; do
  ( export CUDA_VISIBLE_DEVICES=\$k
    $train --channels 2d --seed 20\$k --train-cache $cc/folds/fold\$k/train \
      --val-cache $cc/folds/fold\$k/heldout --out $runs/f\$k > $runs/f\$k.log 2>&1
    python3 benchmarks/cascade_priors.py $cc/held\$k --device cuda --backend torch --store /tmp/pstore \
      --part $cc/folds/fold\$k/heldout=$runs/f\$k/model_best.safetensors
    python3 benchmarks/cascade_priors.py $cc/val\$k --device cuda --backend torch --store /tmp/pstore \
      --part /tmp/cache/val=$runs/f\$k/model_best.safetensors ) > $runs/prior\$k.log 2>&1 &
done
wait
python3 -c "import sys; from MambaDoseTrainingLib.cache import combine_caches as c; c([(p, None) for p in sys.argv[2:]], sys.argv[1])" \
  $cc/train_prior $cc/held0 $cc/held1 $cc/held2 $cc/held3 || exit 1
python3 benchmarks/cascade_priors.py $cc/val_prior --device cuda --backend torch --store /tmp/pstore \
  --part /tmp/cache/val=$runs/f0/model_best.safetensors+$runs/f1/model_best.safetensors+$runs/f2/model_best.safetensors+$runs/f3/model_best.safetensors || exit 1
for p in $p0 $p1 $p2; do
  python3 benchmarks/gpu/prebuild_features.py --workers 20 --channels \$p --caches $cc/train_prior $cc/val_prior &
done
wait
s2="--epochs $epochs2 --train-cache $cc/train_prior --val-cache $cc/val_prior"
run2() { CUDA_VISIBLE_DEVICES=\$1 $train \$s2 --seed \$3 --channels \$4 "\${@:5}" --out $runs/\$2 > $runs/\$2.log 2>&1; }
(run2 0 a1 301 $p1; ) & (run2 0 a2 302 $p1; ) &
(run2 1 b1 311 $p0; ) & (run2 1 c1 321 $p2; ) &
(run2 2 d1 331 $p1 --dvh-loss 1; ) & (run2 2 d2 332 $p1 --dvh-loss 1; ) &
(run2 3 a3 303 $p1; ) & (run2 3 b2 312 $p0; ) &
wait
touch $runs/cascade.done
EOF
[ -n "${DRY:-}" ] && { cat $cc/pipeline.sh; exit 0; }  # DRY=1: print the pipeline, start nothing
setsid nohup bash $cc/pipeline.sh > $runs/pipeline.log 2>&1 < /dev/null &
sleep 2
echo "started the cascade pipeline: $runs/pipeline.log"
