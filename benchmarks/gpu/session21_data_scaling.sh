#!/usr/bin/env bash
# Session 21: how does one 2D network's validation dose score scale with the number of training
# patients? Twenty sessions of recipe changes left single networks at 2.86-2.95 Gy; session 10's
# cross-fitting (10 % more patients) moved nothing measurable. A learning curve over 21, 42 and 84
# of the 169 training patients (nested: `--max-train-patients N` takes the first N of the cache),
# against the seven runs of the same recipe on all 169 (u3-u9, sessions 15-18), says how many
# patients this network would need for a given dose score (`python benchmarks/data_scaling.py`).
# Recipe: the u runs' (s51's 2D recipe without the Left/Right swap: one scan direction, EMA 0.999,
# lr 3e-4, Smooth L1 beta 0.01, compiled with CUDA graphs), with the same number of optimiser steps
# and the same schedule in steps: an epoch balances N patients and so holds about 13,022 x N / 169
# slices, so a run on N = 169 / M patients gets M times the epochs (24 M), warm-up (2 M) and
# validation interval (2 M). Validation: every slice of the 33 validation patients, best kept.
# Chained on GPU 0 in the background (setsid nohup), so the runs outlive the device call; the
# histories and logs come back by `bash benchmarks/gpu/send_staged.sh` (text.tgz).
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session21_data_scaling.sh TIME_LIMIT_S ["RUNS"]
# RUNS (default "p42a+p84a+p21a+p42b+p84b+p21b"): names joined by "+" run one after the other;
# p<N><seed letter>.
limit=$1; runs_wanted=${2:-p42a+p84a+p21a+p42b+p84b+p21b}
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" 24 --scan-directions 1 \
  --backend torch --compile --patience 1000
[ -e /tmp/feat/.done ] || { python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1 && touch /tmp/feat/.done; }
d2="--compile-mode reduce-overhead --channels-last --channels 2d --no-lr-swap"
declare -A recipe
for n in 21 42 84; do
  m=$((168 / n))  # 8, 4, 2: 169 / N rounded
  steps="--epochs $((24 * m)) --warmup-epochs $((2 * m)) --val-every $((2 * m)) --max-train-patients $n"
  recipe[p${n}a]="p${n}a 2101 $d2 $steps"
  recipe[p${n}b]="p${n}b 2102 $d2 $steps"
done
start_chains "$runs_wanted"
