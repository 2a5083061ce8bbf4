#!/usr/bin/env bash
# After benchmarks/gpu/session14_laterality_runs.sh: weights first (session4_collect.sh, NO_SCORE=1:
# float16 copies in /tmp/half, tarballs in $OUT and /tmp/out_next), then every run and every member
# of the shipped ensemble (split into MEMBERS_DIR by benchmarks/ensemble_members.py) predicted on the
# validation patients (benchmarks/ensemble_eval.py, store /tmp/s14store; three processes a GPU): every
# run without TTA, and with the flip TTA the networks trained with the usual flip (the shipped
# members, as the shipped ensemble with --tta runs them, and the controls c*; a network trained
# without the flip would be averaged with a mirror it never saw). Then the combos of COMBOS_FILE
# (benchmarks/ensemble_combos.py --widen-ptv-hot-end and the parotids' mean-dose bias, one process a
# group). All text into $OUT/s14_text.tgz.
#   bash benchmarks/gpu/session14_collect.sh WAIT_S MEMBERS_DIR COMBOS_FILE
set -u
wait_s=$1; members=$2; combos=$3; out=${OUT:-/tmp/out}; txt=/tmp/s14text; mkdir -p $out $txt
NO_SCORE=1 bash benchmarks/gpu/session4_collect.sh "$wait_s" > $txt/collect.txt 2>&1
cp /tmp/runs/*.log $txt/ 2>/dev/null
[ -d /tmp/valpats ] || python3 benchmarks/gpu/cache_to_openkbp.py /tmp/cache/val /tmp/valpats > /dev/null
store=/tmp/s14store; ev="python3 benchmarks/ensemble_eval.py --device cuda --split /tmp/valpats --store $store"
flipped=""; plain=""
for i in 0 1 2 3 4 5; do flipped="$flipped $members/member$i.safetensors@axial"; done
for f in /tmp/half/*.safetensors; do
  plain="$plain $f"; case $(basename $f) in c*) flipped="$flipped $f" ;; esac
done
# deal the (model, tta) jobs to three processes a GPU
jobs=(); for f in $plain; do jobs+=("$f|"); done; for f in $flipped; do jobs+=("$f|--tta"); done
gpus=$(nvidia-smi -L | wc -l); slots=$((3 * gpus))
for ((s = 0; s < slots; s++)); do
  (for ((j = s; j < ${#jobs[@]}; j += slots)); do
     spec=${jobs[$j]}; CUDA_VISIBLE_DEVICES=$((s % gpus)) $ev ${spec%%|*} ${spec#*|} > "$txt/single_$(basename ${spec%%|*} .safetensors | tr -d @)${spec#*|}.txt" 2>&1
   done) &
done
wait
for f in $txt/single_*.txt; do echo "$(basename $f .txt) $(grep -A1 'dose score  DVH' $f | tail -1)"; done > $txt/singles.txt
cat $txt/singles.txt
# combos: each combo / paired line of COMBOS_FILE is one --combo / --paired; models named by the script below
names=""; for f in /tmp/half/*.safetensors; do names="$names --model $(basename $f .safetensors)=$f"; done
for i in 0 1 2 3 4 5; do names="$names --model-tta tm$i=$members/member$i.safetensors@axial"; done
for f in /tmp/half/c*.safetensors; do names="$names --model-tta t$(basename $f .safetensors)=$f"; done
awk -v t=$txt '/^## group/ {g++; next} /^(combo|paired) / {print > (t "/group_" g ".args")}' $combos
bias="--roi-bias RightParotid:mean --roi-bias LeftParotid:mean --roi-bias PTV70:D_1 --roi-bias Brainstem:D_0.1_cc"
for f in $txt/group_*.args; do
  args=$(sed -e 's/^combo /--combo /' -e 's/^paired /--paired /' $f | tr '\n' ' ')
  python3 benchmarks/ensemble_combos.py --split /tmp/valpats --store $store $names $args $bias --widen-ptv-hot-end \
    > ${f%.args}.txt 2> ${f%.args}.err &
done
wait
cat $txt/group_*.txt > $txt/combos.txt
cat $txt/combos.txt
tar czf $out/s14_text.tgz -C $txt .
ls -la $out
