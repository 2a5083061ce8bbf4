#!/usr/bin/env bash
# After benchmarks/gpu/multiview_runs.sh: score the best MambaUNetV2 run through the user-facing
# commands (predict-openkbp + evaluate on the validation patients written back from the cache:
# all views; all views + flip TTA; axial only) and pack every run's small outputs into $OUT.
#   bash benchmarks/gpu/collect.sh
set -u
runs=/tmp/runs; out=${OUT:-/tmp/out}; mkdir -p $out
python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
best=$(python3 - <<'PY'
import json, pathlib
scores = {}
for name in ("mv1", "mv2"):
    card = pathlib.Path(f"/tmp/runs/{name}/model_best.json")
    if card.exists():
        scores[name] = json.loads(card.read_text())["training"]["validation"]["val_dose_score"]
print(min(scores, key=scores.get) if scores else "")
PY
)
echo "best run: $best"
if [ -n "$best" ]; then
  model=$runs/$best/model_best.safetensors
  for variant in "all:" "tta:--tta" "axial:--views axial"; do
    name=${variant%%:*}; opts=${variant#*:}
    ( python3 -m MambaDoseLib.cli predict-openkbp /tmp/valpats /tmp/pred_$name --model $model --device cuda $opts \
        > $runs/predict_$name.log 2>&1
      python3 -m MambaDoseLib.cli evaluate /tmp/valpats /tmp/pred_$name > $runs/evaluate_$name.log 2>&1 ) &
  done
  wait
  for name in all tta axial; do echo "== $name"; tail -2 $runs/evaluate_$name.log; done
fi
for name in mv1 mv2 unet attn; do
  [ -d $runs/$name ] && tar czf $out/$name.tgz -C $runs $name/history.csv $name/train.log $name/curves.png \
    $(cd $runs && ls $name/model_best.* 2>/dev/null) $name.log 2>/dev/null
done
tar czf $out/logs.tgz -C $runs $(cd $runs && ls *.log *.json 2>/dev/null)
ls -la $out
