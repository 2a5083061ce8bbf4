#!/usr/bin/env bash
# Session 14's runs on one GPU: does the left-right flip cost accuracy? The training plans
# spare the left parotid 2.03 +- 0.45 Gy more than the right (session 12,
# benchmarks/error_anatomy.py); every network so far was trained with the left-right mirror and the
# Left/Right channels swapped with it, so it can tie that difference neither to the side nor to the
# name, and the shipped ensemble's right parotid mean dose is 1.8 Gy too cold on validation.
# Planned for a 4-GPU host in session 13 (whose machine was given back before the runs came home);
# session 14 had one H200, so one variant against a control, all on GPU 0, three at a time:
#   n5  3D, no left-right flip (--flip-lr-p 0), DVH term W = 2 over slabs: session 9's h93 recipe
#       (GroupNorm, widths 24-192, slabs of 32, EPOCHS_3D cosine, validated every 5th), the recipe
#       of the shipped ensemble's 3D member, so n5 can stand in for it
#   n1, n2  2D, no flip (s51's recipe, EPOCHS_2D cosine, validated every 2nd epoch, best kept), one
#       after the other
#   c1, c2  2D controls: the same with the usual flip and Left/Right swap, same seeds' neighbours
#   n3, c3, u3 (and n4, c4, u4: seed 1402)  session 15: one seed (1401) for all three, so that they differ only in the mirror:
#       no flip (n3), flip with the Left/Right swap (c3), flip without the swap (u3: a mirrored
#       patient keeps its names, so "LeftParotid" can carry the sparing whichever side it lies on)
# Everything in the background (setsid nohup), so the runs outlive the device call; collect with
# `NO_SCORE=1 bash benchmarks/gpu/session4_collect.sh WAIT_S`.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
# RUNS (default "n5 n1+n2 c1+c2"): the chains to start, names joined by "+" run one after the other.
# Session 16: "c5 u5 c6", then "u6 c7 u7" (seeds 1403-1405), to decide whether --no-lr-swap
# should be the default on five seeds of each.
# Session 17: "a1 a2 a3" (u's recipe + the anterior-posterior flip), then "d1 d2 d3" (+ the
# transposition as well: all eight symmetries of the square), seeds 1401-1403 as u3, u4, u5, then
# "a4 a5" (seeds 1404-1405 as u6, u7; that last call ran the loop to 5 by sed on the machine, as here).
# Session 14's machine went back twice before the runs came home; its last device minutes ran
# "n1 c1" with EPOCHS_2D = 14. Session 15 (one H200): "n3 c3 u3", then "n4 c4 u4", with EPOCHS_2D = 24.
#   bash benchmarks/gpu/session14_laterality_runs.sh TIME_LIMIT_S EPOCHS_3D EPOCHS_2D ["RUNS"]
limit=$1; epochs3=$2; epochs2=$3; runs_wanted=${4:-n5 n1+n2 c1+c2}
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs3" --scan-directions 1 \
  --backend torch --compile --patience 1000
[ -e /tmp/feat/.done ] || { python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1 && touch /tmp/feat/.done; }
d3="--channels 2d --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3"
d3="$d3 --model-option norm=group --model-channels 24,48,96,192 --val-every 5"  # one line: chain reads it
d2="--epochs $epochs2 --compile-mode reduce-overhead --channels-last --channels 2d --val-every 2"
nf="--flip-lr-p 0"
declare -A recipe=([n5]="n5 1305 $d3 $nf --dvh-loss 2" [n1]="n1 1301 $d2 $nf" [n2]="n2 1302 $d2 $nf"
  [c1]="c1 1321 $d2" [c2]="c2 1322 $d2" [n3]="n3 1401 $d2 $nf" [c3]="c3 1401 $d2"
  [u3]="u3 1401 $d2 --no-lr-swap" [n4]="n4 1402 $d2 $nf" [c4]="c4 1402 $d2"
  [u4]="u4 1402 $d2 --no-lr-swap")
for k in 5 6 7; do  # session 16: three more seeds of the swap against no swap
  recipe[c$k]="c$k $((1398 + k)) $d2"; recipe[u$k]="u$k $((1398 + k)) $d2 --no-lr-swap"
done
for k in 1 2 3 4 5; do  # session 17: more symmetries of the slice, no swap, paired with u3-u7 by seed
  recipe[a$k]="a$k $((1400 + k)) $d2 --no-lr-swap --flip-ap-p 0.5"  # + anterior-posterior flip
  recipe[d$k]="d$k $((1400 + k)) $d2 --no-lr-swap --flip-ap-p 0.5 --transpose-p 0.5"  # all 8 of the square
done
# session 18: members for an ensemble rebuilt without the Left/Right swap (sessions 16-17 measured
# its DVH gain): h1 the shipped 3D member's recipe (h93: DVH term W = 2 over slabs) without the swap;
# v1-v9 the 2D recipe with the DVH term W = 1 (session 9's k9x) without the swap; u8, u9 more seeds of u.
# Session 18 ran "h1 v1 v2 u8" (four at once, 506 slices/s each, all four done in 852 s) and then
# "u9" alone (2,003 slices/s, 24 epochs in 204 s): one at a time takes about as long in all and brings
# each run back sooner, so chain them, e.g. "v3+v4+v5+v6+v7"
recipe[h1]="h1 1601 $d3 --no-lr-swap --dvh-loss 2"
for k in 1 2 3 4 5 6 7 8 9; do recipe[v$k]="v$k $((1500 + k)) $d2 --no-lr-swap --dvh-loss 1"; done
for k in 8 9; do recipe[u$k]="u$k $((1398 + k)) $d2 --no-lr-swap"; done
start_chains "$runs_wanted"
