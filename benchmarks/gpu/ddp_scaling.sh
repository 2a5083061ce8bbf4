#!/usr/bin/env bash
# Throughput scaling of `mambadose train` from 1 to 2 GPUs (DistributedDataParallel over NCCL).
# Run on a 2-GPU machine from the repository root, with a training/validation cache in $1
# (folders train/ and val/) and SimpleITK's wheel in .whl/:
#   bash benchmarks/gpu/ddp_scaling.sh CACHE_DIR [MIXER]
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1
cache=$1; mixer=${2:-none}; runs=/tmp/ddp_runs; rm -rf "$runs"
nvidia-smi -L
common="--train-cache $cache/train --val-cache $cache/val --feature-cache /tmp/ddp_features --no-progress
  --channels-last --mixer $mixer --warmup-epochs 1 --epochs 3 --batch-size 32"
echo "=== 1 GPU"
python3 -m MambaDoseLib.cli train $common --out $runs/one 2>&1 | grep -E "epoch [0-9]+/|rror"
echo "=== 2 GPUs (batch 32 per GPU)"
torchrun --standalone --nproc_per_node 2 -m MambaDoseLib.cli train $common --out $runs/two 2>&1 | grep -E "epoch [0-9]+/|rror"
