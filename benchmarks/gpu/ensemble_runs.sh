#!/usr/bin/env bash
# Independent MambaUNetV2 runs, one per GPU (different seeds), for an ensemble
# (docs/experiments.md, "Session 2's ensemble of three"), started in the background so that they
# outlive the call that starts them. Same data path as multiview_runs.sh: needs
# /tmp/cache/{train,val} and `source benchmarks/gpu/setup.sh`, run from a copy of the repository
# that stays put (e.g. /tmp/code). Extra training options (e.g. --ema 0.999 --loss-beta 0.01)
# follow the epoch count.
#   bash benchmarks/gpu/ensemble_runs.sh TIME_LIMIT_S EPOCHS [TRAIN OPTIONS...]
# Afterwards: python benchmarks/ship_ensemble.py OUT.safetensors /tmp/runs/seed*/model_best.safetensors
set -u
limit=$1; epochs=$2; shift 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
runs=/tmp/runs; mkdir -p $runs
gpus=$(nvidia-smi -L | wc -l)
common="--train-cache /tmp/cache/train --val-cache /tmp/cache/val --feature-cache /tmp/feat --lr 3e-4 --batch-size 32 --channels-last --no-progress --resume --scan-directions 2"
# the features once, before the runs share them
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
for i in $(seq 0 $((gpus - 1))); do
  CUDA_VISIBLE_DEVICES=$i setsid nohup python3 -m MambaDoseLib.cli train $common --seed $i --epochs $epochs \
    --time-limit $limit "$@" --out $runs/seed$i > $runs/seed$i.log 2>&1 < /dev/null &
done
sleep 2
echo "started $gpus runs"
