#!/usr/bin/env bash
# Score an ensemble file and the ensemble of its first N members through the user-facing commands
# on a GPU (predict-openkbp --tta on the validation patients written back from the cache, then
# evaluate), in one call: e.g. a mixed 2D + 3D ensemble against the 2D ensemble it grew from.
# Needs /tmp/cache/val and `source benchmarks/gpu/setup.sh` (SimpleITK); writes into $OUT.
#   bash benchmarks/gpu/eval_ensemble_prefix.sh ENSEMBLE.safetensors N
set -eu
model=$1; n=$2; out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/prefix
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
python3 - "$model" "$n" /tmp/prefix/first.safetensors <<'PY'
import sys
from MambaDoseLib.model import MambaUNetV2Ensemble
from MambaDoseLib.weights import load_model, save_model
import torch
model, card = load_model(sys.argv[1])
n = int(sys.argv[2])
first = MambaUNetV2Ensemble([c for c in model.configs[:n]])
for a, b in zip(first.members, model.members[:n]):
    a.load_state_dict(b.state_dict())
card = {**card, "training": {**card["training"], "members": card["training"]["members"][:n]}}
save_model(sys.argv[3], first, card, storage_dtype=torch.float16)
print(f"first {n} members -> {sys.argv[3]}")
PY
for name in first all; do
  file=$model; [ $name = first ] && file=/tmp/prefix/first.safetensors
  rm -rf /tmp/pred_$name
  start=$SECONDS
  python3 -m MambaDoseLib.cli predict-openkbp /tmp/valpats /tmp/pred_$name --model "$file" --device cuda --tta --batch-size 64 \
    2> "$out/predict_$name.log"
  echo "$name: predict-openkbp --tta on $(ls /tmp/pred_$name | wc -l) patients in $((SECONDS - start)) s" | tee -a "$out/eval_$name.txt"
  python3 -m MambaDoseLib.cli evaluate /tmp/valpats /tmp/pred_$name --breakdown >> "$out/eval_$name.txt" 2> /dev/null
  tail -n 2 "$out/eval_$name.txt"
done
