# Shared by benchmarks/gpu/session3_runs.sh ... session8_3d_runs.sh (sourced): the run folder, the
# environment and the recipe every run of those sessions shares, and `start`, which launches one
# training in the background (setsid nohup) so it outlives the device call, and `chain`, which runs
# several, one after the other, on one GPU in the background (sessions 10 and 14-15; each spec is
# "NAME SEED ARGS...", Smooth L1 beta 0.01). Two scan directions, the
# default of sessions 1-5 (one since session 6), unless the extra arguments say otherwise.
#   [CHANNELS_LAST_ARG=] source benchmarks/gpu/runs_common.sh TIME_LIMIT_S EPOCHS [EXTRA_COMMON_ARGS...]
# (CHANNELS_LAST_ARG set to empty drops --channels-last, a 2D layout: session 8's 3D runs.)
# --lr-swap: the Left/Right swap every run of sessions 1-16 trained with except the u runs (their
# --no-lr-swap comes later and wins); the default of `mambadose train` since session 16 is no swap.
set -u
limit=$1; epochs=$2; shift 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=6
runs=/tmp/runs; mkdir -p $runs
common="--train-cache /tmp/cache/train --val-cache /tmp/cache/val --feature-cache /tmp/feat --lr 3e-4 --batch-size 32 ${CHANNELS_LAST_ARG---channels-last} --no-progress --resume --lr-swap --ema 0.999 --warmup-epochs 2 --epochs $epochs --time-limit $limit --workers 8 --scan-directions 2 $*"
start() {  # GPU NAME SEED BETA [EXTRA...]
  local gpu=$1 name=$2 seed=$3 beta=$4; shift 4
  CUDA_VISIBLE_DEVICES=$gpu setsid nohup python3 -m MambaDoseLib.cli train $common --seed $seed \
    --loss-beta $beta "$@" --out $runs/$name > $runs/$name.log 2>&1 < /dev/null &
}
# one GPU, trainings one after the other, in the background (the chain's command line names the
# CLI, so session4_collect.sh waits for the whole chain)
chain() {  # GPU "NAME SEED ARGS..." ...
  local gpu=$1; shift; local cmds="" spec name seed rest
  for spec in "$@"; do
    read -r name seed rest <<< "$spec"
    cmds="$cmds python3 -m MambaDoseLib.cli train $common --seed $seed --loss-beta 0.01 $rest --out $runs/$name > $runs/$name.log 2>&1;"
  done
  CUDA_VISIBLE_DEVICES=$gpu setsid nohup bash -c "$cmds" > /dev/null 2>&1 < /dev/null &
}
# the chains named in RUNS on GPU 0 (sessions 14-21): "a+b c" runs a then b, and c beside them; each
# name a key of the caller's associative array `recipe` ("NAME SEED ARGS...")
start_chains() {  # "RUNS"
  local want n; local -a specs names
  for want in $1; do
    specs=(); IFS=+ read -ra names <<< "$want"
    for n in "${names[@]}"; do
      [ -n "${recipe[$n]:-}" ] || { echo "unknown run: $n (known: ${!recipe[*]})" >&2; return 1; }
      specs+=("${recipe[$n]}")
    done
    chain 0 "${specs[@]}"
  done
  sleep 2
  echo "started: $(ls $runs/*.log | wc -l) logs"
}
