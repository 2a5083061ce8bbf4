#!/usr/bin/env bash
# Session 19: copy into $OUT what benchmarks/gpu/predict_behind.sh staged in /tmp/out19 and no
# earlier call brought back (a call returns at most 8 files): every small text (evaluations, cards,
# the runs' logs and histories) as one text.tgz, then up to 7 packs or weights files, oldest first.
#   bash benchmarks/gpu/send_staged.sh
stage=/tmp/out19; sent=/tmp/sent19; out=${OUT:-/tmp/out}; touch $sent; mkdir -p $stage $out
tar czf $out/text.tgz $stage/*.txt $stage/*.json /tmp/runs/*.log /tmp/runs/*/history.csv 2>/dev/null
k=0
for f in $(ls -tr $stage/*.npz $stage/*.safetensors 2>/dev/null); do
  grep -qx "$f" $sent && continue
  [ $k -ge 7 ] && break
  cp "$f" $out/ && echo "$f" >> $sent && k=$((k + 1))
done
ls -la $out
