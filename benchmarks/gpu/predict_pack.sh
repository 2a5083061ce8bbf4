#!/usr/bin/env bash
# Predict the validation patients (written back from the cache) with model files on the GPU and
# bring the doses back packed (benchmarks/pack_predictions.py, about 11 MB a set), with the
# evaluation of each: $OUT/<label>.npz and $OUT/eval_<label>.txt. For post-processing studies on
# the CPU of the shipped networks' own doses, which the CPU makes at 40-90 s a patient.
# Needs /tmp/cache/val and `source benchmarks/gpu/setup.sh`.
#   bash benchmarks/gpu/predict_pack.sh LABEL=FILE[:tta] [LABEL=FILE[:tta] ...]
set -eu
out=${OUT:-/tmp/out}; mkdir -p "$out"
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
for spec in "$@"; do
  label=${spec%%=*}; file=${spec#*=}; tta=""
  case "$file" in *:tta) file=${file%:tta}; tta="--tta" ;; esac
  rm -rf "/tmp/pred_$label"; start=$SECONDS
  python3 -m MambaDoseLib.cli predict-openkbp /tmp/valpats "/tmp/pred_$label" --model "$file" \
    --device cuda $tta --batch-size 64 2> "/tmp/predict_$label.log"
  echo "$label: $file $tta, $(ls "/tmp/pred_$label"/pt_*.csv | wc -l) patients in $((SECONDS - start)) s" | tee "$out/eval_$label.txt"
  python3 -m MambaDoseLib.cli evaluate /tmp/valpats "/tmp/pred_$label" --breakdown >> "$out/eval_$label.txt" 2> /dev/null
  tail -n 2 "$out/eval_$label.txt"
  python3 benchmarks/pack_predictions.py pack "/tmp/pred_$label" "$out/$label.npz"
done
