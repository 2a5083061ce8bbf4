#!/usr/bin/env bash
# Session 19: predict each run of a training chain (benchmarks/gpu/session14_laterality_runs.sh)
# with flip TTA as soon as its best weights land, behind the chain on the same GPU, so the doses
# for the CPU's combination studies (benchmarks/ensemble_combos.py) come home with the weights and
# the CPU need not make them (12 s a patient and network there). Staged in /tmp/out19 (packs,
# evaluations, weights), which `session14_pair_watch.sh`-style calls copy into $OUT.
# Start in the background (setsid nohup) after the chain; it gives up after WAIT_S.
#   bash benchmarks/gpu/predict_behind.sh WAIT_S NAME...
wait_s=$1; shift; end=$((SECONDS + wait_s)); stage=/tmp/out19; mkdir -p $stage
for n in "$@"; do
  while [ ! -e /tmp/runs/$n/model_best.safetensors ] && [ $SECONDS -lt $end ]; do sleep 10; done
  [ -e /tmp/runs/$n/model_best.safetensors ] || break
  sleep 5  # the run writes its card beside the weights
  cp /tmp/runs/$n/model_best.safetensors $stage/tmp_$n && mv $stage/tmp_$n $stage/${n}_model_best.safetensors
  cp /tmp/runs/$n/model_best.json $stage/${n}_card.json 2>/dev/null
  OUT=$stage bash benchmarks/gpu/predict_pack.sh "$n=/tmp/runs/$n/model_best.safetensors:tta"
done
echo "predict_behind done"
