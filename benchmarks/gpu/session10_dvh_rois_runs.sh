#!/usr/bin/env bash
# Session 10's second batch, three trainings side by side on one GPU: which structures of the DVH
# term (`--dvh-loss 1`) cost the dose score? Session 9's term on every structure (cad / cbd of
# session10_crossfit_runs.sh, same protocol) gained DVH score and lost dose score; here the term
# on the targets only (t40, t41: two seeds) and on the organs at risk only (o42). The shipped s51's
# 2D recipe (CUDA graphs, EPOCHS cosine), 169 training patients, a fixed length with the last epoch
# kept (validated only there), as the 169-patient runs of the first batch.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session10_dvh_rois_runs.sh TIME_LIMIT_S EPOCHS
limit=$1; epochs=$2
source benchmarks/gpu/runs_common.sh "$limit" "$epochs" --scan-directions 1 --backend torch --compile \
  --val-every 1000 --compile-mode reduce-overhead --channels 2d --dvh-loss 1
python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1
start 0 t40 140 0.01 --dvh-loss-rois targets
start 0 t41 141 0.01 --dvh-loss-rois targets
start 0 o42 142 0.01 --dvh-loss-rois oars
sleep 2
echo "started: $(ls $runs/*.log | wc -l) logs"
