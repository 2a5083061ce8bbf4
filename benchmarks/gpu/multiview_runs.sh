#!/usr/bin/env bash
# Session-2 training runs on one 4-GPU machine (docs/experiments.md, "Session 2"), started in the
# background so that they outlive the call that starts them:
#   GPU 0    MambaUNetV2 on axial + coronal + sagittal slices, 1 GPU
#   GPU 1,2  the same on 2 GPUs (torchrun, DDP): its slices/s against GPU 0's, same host, same time,
#            is the throughput scaling
#   GPU 3    benchmarks/model_speed.py, then the UNet and Transformer baselines, same recipe
# Needs /tmp/cache/{train,val} (mambadose preprocess) and `source benchmarks/gpu/setup.sh` done,
# run from a copy of the repository that stays put (e.g. /tmp/code).
#   bash benchmarks/gpu/multiview_runs.sh TIME_LIMIT_S EPOCHS_1GPU EPOCHS_2GPU EPOCHS_UNET EPOCHS_ATTN
set -u
limit=$1; e1=$2; e2=$3; eu=$4; ea=$5
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
runs=/tmp/runs; mkdir -p $runs
deadline=$(( $(date +%s) + limit ))  # every run stops (between epochs) by then
views=axial,coronal,sagittal
# one line: it is also pasted into the bash -c string of GPU 3 below
common="--train-cache /tmp/cache/train --val-cache /tmp/cache/val --feature-cache /tmp/feat --views $views --lr 3e-4 --batch-size 32 --warmup-epochs 2 --channels-last --no-progress --resume --scan-directions 2"
export OMP_NUM_THREADS=8  # several trainings share the host's cores
# features of every view, once, for all runs (they share the feature cache)
python3 benchmarks/gpu/prebuild_features.py --views $views --workers 48 > $runs/features.log 2>&1
start() {  # name, GPUs, command...
  local name=$1 gpus=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpus setsid nohup "$@" --out $runs/$name > $runs/$name.log 2>&1 < /dev/null &
}
left() { echo $(( deadline - $(date +%s) )); }
start mv1 0 python3 -m MambaDoseLib.cli train $common --mixer mamba2 --epochs $e1 --time-limit $(left)
start mv2 1,2 torchrun --standalone --nproc_per_node 2 -m MambaDoseLib.cli train $common --mixer mamba2 \
  --epochs $e2 --time-limit $(left)
CUDA_VISIBLE_DEVICES=3 setsid nohup bash -c "
  python3 benchmarks/model_speed.py --device cuda --batch 32 --steps 20 --no-flops --json $runs/speed.json \
    --variants 'mamba2-triton:scan_directions=2,mamba2-torch:scan_directions=2,attention,unet,mamba2-triton:scan_directions=1,mamba2-triton:mixer_min_level=3;scan_directions=2,mamba2-triton+compile:scan_directions=2' > $runs/speed.log 2>&1
  python3 -m MambaDoseLib.cli train $common --mixer none --epochs $eu --time-limit \$(( $deadline - \$(date +%s) )) --out $runs/unet > $runs/unet.log 2>&1
  python3 -m MambaDoseLib.cli train $common --mixer attention --epochs $ea --time-limit \$(( $deadline - \$(date +%s) )) --out $runs/attn > $runs/attn.log 2>&1
" > /dev/null 2>&1 < /dev/null &
sleep 2
echo started; nvidia-smi -L
