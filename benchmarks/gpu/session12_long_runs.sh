#!/usr/bin/env bash
# Session 12's runs: far longer training with the stronger augmentation, in 2D and in 3D. Every
# earlier run stopped improving after 20-60 epochs while its training loss kept falling (sessions
# 5-8); the stronger augmentation (session 6's s61: rotation / scale / shift with probability 0.6,
# up to 15 deg, 0.85-1.15, 8 %) fitted the training patients less but was scored after 32 epochs
# only. Here it gets 2-3x the epochs, in the background so the runs outlive the device call:
#   q1  2D, the shipped s51's recipe + stronger augmentation, EPOCHS_2D cosine, validated every 4th
#   q2  3D, session 8's g95 (GroupNorm, widths 24-192, slabs of 32, 4 a step) + stronger
#       augmentation, EPOCHS_3D cosine, validated every 8th
#   q3  as q2 with the DVH term W = 2 over slabs (the shipped ensemble's 3D member h93's recipe)
#   q4  as q1 with the DVH term W = 1 (session 9's k9x)
# No early stopping (patience above the run length): the best validated epoch is kept, as in every
# earlier run, and the history shows where it turned over.
# Needs /tmp/cache/{train,val}, `source benchmarks/gpu/setup.sh`, run from a copy that stays put.
#   bash benchmarks/gpu/session12_long_runs.sh TIME_LIMIT_S EPOCHS_2D EPOCHS_3D GPU_A GPU_B [RUNS]
# (q1, q2 on GPU_A, q3, q4 on GPU_B; RUNS: which of q1..q4 to start, default all four.)
limit=$1; epochs2=$2; epochs3=$3; gpu_a=$4; gpu_b=$5; which=${6:-q1,q2,q3,q4}
CHANNELS_LAST_ARG="" source benchmarks/gpu/runs_common.sh "$limit" "$epochs2" --scan-directions 1 \
  --backend torch --compile --patience 1000
[ -e /tmp/feat/.done ] || { python3 benchmarks/gpu/prebuild_features.py > $runs/features.log 2>&1 && touch /tmp/feat/.done; }
strong="--rotate-p 0.6 --rotate-deg 15 --scale-p 0.6 --scale-range 0.85,1.15 --shift-p 0.6 --shift-frac 0.08"
d3="--channels 2d --slab 32 --batch-size 128 --val-batch-size 128 --model-option conv_dims=3
  --model-option norm=group --model-channels 24,48,96,192 --epochs $epochs3 --val-every 8"
d2="--channels 2d --epochs $epochs2 --compile-mode reduce-overhead --channels-last --val-every 4"
case ",$which," in *,q1,*) start $gpu_a q1 121 0.01 $d2 $strong ;; esac
case ",$which," in *,q2,*) start $gpu_a q2 122 0.01 $d3 $strong ;; esac
case ",$which," in *,q3,*) start $gpu_b q3 123 0.01 $d3 $strong --dvh-loss 2 ;; esac
case ",$which," in *,q4,*) start $gpu_b q4 124 0.01 $d2 $strong --dvh-loss 1 ;; esac
sleep 2
echo "started $which"
