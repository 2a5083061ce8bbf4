#!/usr/bin/env bash
# While the runs NAMES train (benchmarks/gpu/session14_laterality_runs.sh), copy each one's best
# weights into $OUT every 15 s, and its card, history and log into one $OUT/text.tgz (a call returns
# at most 8 files), so a call cut short still brings back the best so far; stop waiting after WAIT_S.
# Session 14's last device minutes (n1 c1) and session 15's (n3 c3 u3); since session 18 a 3D
# network's weights come back as a float16 copy <NAME>_half.safetensors (its card inside).
#   bash benchmarks/gpu/session14_pair_watch.sh WAIT_S NAME...
wait_s=$1; shift; out=${OUT:-/tmp/out}; end=$((SECONDS + wait_s))
grab() {
  local n texts=()
  for n in "$@"; do
    [ -e /tmp/runs/$n/model_best.safetensors ] &&
      cp /tmp/runs/$n/model_best.safetensors $out/tmp_$n && mv $out/tmp_$n $out/${n}_model_best.safetensors
    for f in /tmp/runs/$n/model_best.json /tmp/runs/$n/history.csv /tmp/runs/$n.log; do
      [ -e "$f" ] && texts+=("$f")
    done
  done
  [ ${#texts[@]} -gt 0 ] && tar czf $out/tmp_text.tgz "${texts[@]}" 2>/dev/null && mv $out/tmp_text.tgz $out/text.tgz
}
while pgrep -f "[M]ambaDoseLib.cli train" > /dev/null && [ $SECONDS -lt $end ]; do
  grab "$@"; sleep 15
done
grab "$@"
# a best file past 15 MiB (a 3D network in float32) would not come back: a float16 copy instead
for n in "$@"; do
  f=/tmp/runs/$n/model_best.safetensors
  if [ -e $f ] && [ $(stat -c %s $f) -gt $((15 * 2**20)) ]; then
    rm -f $out/${n}_model_best.safetensors
    python3 benchmarks/gpu/half_copy.py $f $out/${n}_half.safetensors
  fi
done
for n in "$@"; do grep "epoch" /tmp/runs/$n.log | tail -3 | cut -c1-200; done
ls -la $out
