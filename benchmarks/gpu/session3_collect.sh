#!/usr/bin/env bash
# After benchmarks/gpu/session3_runs.sh: wait for the trainings (at most WAIT_S), then predict the
# validation patients (written back from the cache) with every run's best weights and with the
# shipped three-network ensemble (counted as three), score each alone and the means of the
# first k (native runs best first, then the shipped ensemble, then the 3.906 mm runs), and put
# the weights (up to 7 files) and a tarball of histories, cards, logs and scores into $OUT.
#   bash benchmarks/gpu/session3_collect.sh WAIT_S [SHIPPED_ENSEMBLE.safetensors]
set -u -f  # -f: no filename globbing (model arguments carry '*3' weights)
runs=/tmp/runs; out=${OUT:-/tmp/out}; mkdir -p $out
end=$((SECONDS + $1)); shipped=${2:-}
while pgrep -f "[M]ambaDoseLib.cli train" > /dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
order=$(python3 - <<'PY'
import json, pathlib
cards = {p.parent.name: json.loads(p.read_text()) for p in pathlib.Path("/tmp/runs").glob("*/model_best.json")}
score = {n: c["training"]["validation"]["val_dose_score"] for n, c in cards.items()}
print(" ".join(sorted((n for n in score if n.startswith("n")), key=score.get)),
      " ".join(sorted((n for n in score if n.startswith("r")), key=score.get)))
PY
)
echo "order: $order"
models=""
for n in $order; do case $n in r*) [ -n "$shipped" ] && models="$models $shipped*3"; shipped="";; esac; models="$models $runs/$n/model_best.safetensors"; done
[ -n "$shipped" ] && models="$models $shipped*3"
python3 benchmarks/ensemble_eval.py $models --device cuda --split /tmp/valpats --store /tmp/ens --prefix-means \
  > $runs/ensemble_eval.txt 2>&1
tail -25 $runs/ensemble_eval.txt
(set +f; tar czf $out/results.tgz -C $runs $(cd $runs && ls *.log *.txt */history.csv */model_best.json */train.log 2>/dev/null))  # globs on here
i=0; for n in $order; do [ $i -lt 7 ] && cp $runs/$n/model_best.safetensors $out/$n.safetensors; i=$((i + 1)); done
ls -la $out
