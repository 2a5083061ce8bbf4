#!/usr/bin/env bash
# Score model files through the user-facing commands on a GPU, in one call: for each FILE,
# `predict-openkbp --tta --device cuda` on the validation patients written back from the cache, then
# `evaluate --breakdown`; outputs in $OUT/eval_<name>.txt (name: the file's stem).
# Needs /tmp/cache/val and `source benchmarks/gpu/setup.sh` (SimpleITK).
#   bash benchmarks/gpu/eval_ensembles.sh FILE.safetensors [FILE.safetensors ...]
set -eu
out=${OUT:-/tmp/out}; mkdir -p "$out"
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
for file in "$@"; do
  name=$(basename "$file" .safetensors)
  rm -rf "/tmp/pred_$name"
  start=$SECONDS
  python3 -m MambaDoseLib.cli predict-openkbp /tmp/valpats "/tmp/pred_$name" --model "$file" --device cuda \
    --tta --batch-size 64 2> "$out/predict_$name.log"
  echo "$name: predict-openkbp --tta on $(ls "/tmp/pred_$name" | wc -l) patients in $((SECONDS - start)) s" \
    | tee "$out/eval_$name.txt"
  python3 -m MambaDoseLib.cli evaluate /tmp/valpats "/tmp/pred_$name" --breakdown >> "$out/eval_$name.txt" 2> /dev/null
  tail -n 2 "$out/eval_$name.txt"
done
