#!/usr/bin/env bash
# After benchmarks/gpu/session11_cascade_runs.sh (and session4_collect.sh with NO_SCORE=1): score on
# the GPU host, into $OUT, the cascade against the first stage and the shipped ensemble on the 33
# validation patients (written back from the cache). Predictions go to one store (/tmp/pstore):
# the first-stage networks' are there already (cascade_priors.py), the second-stage networks' are
# made by cascade_priors.py on val_prior (their input needs the first-stage dose), the shipped
# ensemble's by ensemble_eval.py. Then ensemble_combos.py scores single networks and means, with
# paired comparisons.
#   bash benchmarks/gpu/session11_score.sh [SHIPPED_ENSEMBLE.safetensors]
set -u
runs=/tmp/runs; cc=/tmp/cascade; out=${OUT:-/tmp/out}; store=/tmp/pstore; mkdir -p $out
shipped=${1:-}
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
second=$(cd $runs && for n in a1 a2 a3 b1 b2 c1 d1 d2; do [ -f $n/model_best.safetensors ] && echo $n; done)
parts=""; for n in $second; do parts="$parts+$runs/$n/model_best.safetensors"; done
rm -rf $cc/second_stage  # (a cache of the validation patients with the mean second-stage dose)
python3 benchmarks/cascade_priors.py $cc/second_stage --device cuda --backend torch --store $store \
  --part "$cc/val_prior=${parts#+}" > $out/second_stage_predict.log 2>&1
models=""; combos=""; first=""
for k in 0 1 2 3; do models="$models --model f$k=$runs/f$k/model_best.safetensors"; first="$first+f$k"; done
for n in $second; do models="$models --model $n=$runs/$n/model_best.safetensors"; combos="$combos --combo $n=$n"; done
combos="$combos --combo first4=${first#+} --combo f0=f0"
combos="$combos --combo a_mean=a1+a2+a3 --combo all_second=$(echo $second | tr ' ' '+')"
paired="--paired first4:a_mean --paired first4:all_second"
if [ -n "$shipped" ]; then
  python3 benchmarks/ensemble_eval.py "$shipped" --device cuda --split /tmp/valpats --store $store \
    > $out/shipped_predict.log 2>&1
  models="$models --model ship=$shipped"
  combos="$combos --combo ship=ship --combo ship_a=ship*6+a1+a2+a3 --combo ship_all=ship*6+$(echo $second | tr ' ' '+')"
  combos="$combos --combo ship_first4=ship*6+${first#+}"
  paired="$paired --paired ship:a_mean --paired ship:ship_a --paired ship:ship_all"
fi
python3 benchmarks/ensemble_combos.py $models $combos $paired --split /tmp/valpats --store $store \
  > $out/cascade_combos.txt 2>&1
cat $out/cascade_combos.txt
