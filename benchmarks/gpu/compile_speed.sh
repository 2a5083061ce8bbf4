#!/usr/bin/env bash
# Issue 3's open row: does compiling the whole MambaUNetV2 (the Triton scan is a custom op, so
# Dynamo sees one graph) lift training throughput? One process per variant, each under its own
# time limit so a stalled variant cannot take the others with it; the eager Triton row first (it
# also compiles the Triton kernels, cached for the later processes) is the same-call baseline.
# Needs `source benchmarks/gpu/setup.sh`.  bash benchmarks/gpu/compile_speed.sh OUT_DIR [LIMIT_S [VARIANTS]]
set -u
out=$1; limit=${2:-240}
variants=${3:-mamba2-triton,mamba2-triton+compile,mamba2-torch+compile,mamba2-triton+cudagraphs}
mkdir -p "$out"
# split as model_speed.py does (commas inside brackets belong to a value)
mapfile -t list < <(cd benchmarks && python3 -c "import sys; from model_speed import split_variants
print(*split_variants(sys.argv[1]), sep='\n')" "$variants")
for v in "${list[@]}"; do
  echo "== $v ($(date +%T))"
  timeout -k 5 "$limit" python3 benchmarks/model_speed.py --device cuda --variants "$v" --batch 32 \
    --no-flops --json "$out/speed_${v//[^A-Za-z0-9_-]/_}.json" 2>&1 | grep -v "^\s*$" | tail -n 25
  echo "rc ${PIPESTATUS[0]}"
done
