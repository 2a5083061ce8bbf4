#!/usr/bin/env bash
# After benchmarks/gpu/session4_runs.sh: wait for the trainings (at most WAIT_S), put into $OUT
# first what must not be lost (the runs' best weights stored as float16, as many runs per tarball as
# fit in 15 MiB, and
# a tarball of histories, cards and logs), then predict the validation patients (written back from
# the cache) with every run's best weights, score each alone and the means of the first k (best
# first), and with the shipped ensemble (counted as its size) in front when one is given.
# In session 4 the scoring came first and the call ran out of device time before the weights left
# the machine: weights first.
#   [NO_SCORE=1] bash benchmarks/gpu/session4_collect.sh WAIT_S [SHIPPED_ENSEMBLE.safetensors SIZE]
# (NO_SCORE=1: stop once the weights and logs are in $OUT.) Also used for session 5's runs.
set -u
runs=/tmp/runs; out=${OUT:-/tmp/out}; mkdir -p $out /tmp/half
end=$((SECONDS + $1)); shipped=${2:-}; size=${3:-1}
while pgrep -f "[M]ambaDoseLib.cli train" > /dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
pkill -f "[M]ambaDoseLib.cli train"  # past WAIT_S: the best checkpoints so far are what we have
while pgrep -f "[M]ambaDoseLib.cli train" > /dev/null; do sleep 1; done  # none half-written
order=$(python3 - <<'PY'
import json, pathlib
cards = {p.parent.name: json.loads(p.read_text()) for p in pathlib.Path("/tmp/runs").glob("*/model_best.json")}
score = {n: c["training"]["validation"].get("val_dose_score") or float("inf") for n, c in cards.items()}
print(" ".join(sorted(score, key=score.get)))
PY
)
echo "order: $order"
tar czf $out/results.tgz -C $runs $(cd $runs && ls *.log */history.csv */model_best.json */train.log 2>/dev/null)
pairs=(); for name in $order; do pairs+=("/tmp/runs/$name/model_best.safetensors" "/tmp/half/$name.safetensors"); done
[ ${#pairs[@]} -gt 0 ] && python3 benchmarks/gpu/half_copy.py "${pairs[@]}"
# tarballs of whole runs (float16 weights + card), best first, each under 15 MiB; $OUT brings back
# 16 MiB a file and about 64 MB a call, so tarballs past 56 MiB in all wait in /tmp/out_next for a
# second call: `cp /tmp/out_next/* $OUT` (session 5 lost its best two runs' tarball to that limit
# until such a call fetched it)
rm -rf /tmp/out_next
python3 - $out $order <<'PY'
import os, sys, tarfile
out, names = sys.argv[1], sys.argv[2:]
group, size = [], 0
total = sum(e.stat().st_size for e in os.scandir(out) if e.is_file())  # results.tgz so far
def flush():
    global total
    if group:
        n = sum(os.path.getsize(f"/tmp/half/{g}{e}") for g in group for e in (".safetensors", ".json"))
        folder = out if total + n <= 56 * 2**20 else "/tmp/out_next"
        os.makedirs(folder, exist_ok=True)
        total += n if folder == out else 0
        with tarfile.open(f"{folder}/w_{'_'.join(group)}.tar", "w") as tar:
            for name in group:
                for ext in (".safetensors", ".json"):
                    tar.add(f"/tmp/half/{name}{ext}", arcname=name + ext)
        print(f"w_{'_'.join(group)}.tar ->", folder)
for name in names:
    n = sum(os.path.getsize(f"/tmp/half/{name}{e}") for e in (".safetensors", ".json")) + 4096
    if size + n > 15 * 2**20:
        flush(); group, size = [], 0
    if n > 16 * 2**20:
        print(f"WARNING: {name} alone is {n / 2**20:.1f} MiB, over the 16 MiB a returned file may have")
    group.append(name); size += n
flush()
PY
ls -la $out
[ "${NO_SCORE:-0}" = 1 ] && exit 0  # score elsewhere (e.g. on the CPU from the weights in $OUT)
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
models=""; for n in $order; do models="$models $runs/$n/model_best.safetensors"; done
eval_args="--device cuda --split /tmp/valpats --store /tmp/ens --prefix-means"
python3 benchmarks/ensemble_eval.py $models $eval_args 2>&1 | grep -v " pt_" > $out/ensemble_eval_new.txt
tail -20 $out/ensemble_eval_new.txt
if [ -n "$shipped" ]; then
  python3 benchmarks/ensemble_eval.py "$shipped*$size" $models $eval_args 2>&1 | grep -v " pt_" > $out/ensemble_eval_with_shipped.txt
  tail -12 $out/ensemble_eval_with_shipped.txt
fi
