#!/usr/bin/env bash
# Session 8, before the 3D runs: training slices/s and peak memory of the 3D MambaUNetV2
# (--model-option conv_dims=3, slabs of 32 slices as volumes, batch 128 = 4 volumes) on synthetic
# batches, one variant per GPU of a 4-GPU host at once (so the compile modes and norms can be
# chosen for the real runs), with the 2D network shipped (s51's config) on GPU 3 for scale.
#   bash benchmarks/gpu/probe_3d.sh OUT_DIR
set -u
out=$1; mkdir -p $out
d3="conv_dims=3;slab=32;scan_directions=1"
probe() {  # GPU NAME VARIANT BATCH
  CUDA_VISIBLE_DEVICES=$1 timeout 240 python3 benchmarks/model_speed.py --device cuda --variants "$3" \
    --batch $4 --steps 10 --warmup 3 --no-volume --no-flops --json $out/probe_$2.json > $out/probe_$2.log 2>&1
}
probe 0 triton_group "mamba2-triton:$d3;norm=group,mamba2-triton:$d3;norm=batch" 128 &
probe 1 compile_group "mamba2-torch+compile:$d3;norm=group" 128 &
probe 2 cudagraphs_group "mamba2-torch+cudagraphs:$d3;norm=group" 128 &
probe 3 unet_and_2d "unet+compile:$d3;norm=group,mamba2-torch+cudagraphs:scan_directions=1" 128 &
wait
grep -h -A8 "^variant" $out/probe_*.log
