"""``mambadose train``: train MambaUNetV2 on cached OpenKBP patients (resumable, time-limited).

Multi-GPU: ``torchrun --nproc_per_node N -m MambaDoseLib.cli train ...`` (same options; the batch
size is per GPU).
"""

from __future__ import annotations

import argparse
import json
import os

#: train.COMPILE_MODES and train.DVH_LOSS_ROIS, spelt out here: the parser is built without importing torch.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
DVH_LOSS_ROIS = ("all", "targets", "oars")
HELP = "train MambaUNetV2 on cached patients (resumable with --resume; --time-limit for capped commands)"


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: object = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _range(text: str) -> tuple[float, float]:
    low, high = (float(v) for v in text.split(","))
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_workers = max(1, min(16, os.cpu_count() or 1))
    data = parser.add_argument_group("data")
    data.add_argument("--train-cache", required=True, help="cache folder of the training patients")
    data.add_argument("--val-cache", required=True, help="cache folder of the validation patients")
    data.add_argument("--out", required=True, help="output folder (checkpoints, model, history, log)")
    data.add_argument(
        "--channels",
        default="2d",
        help="input channels: preset 2d | 2.5d (adds ct_prev/ct_next), or a comma list of channel "
        "names (docs/features.md; neighbouring slices as <channel>_prev[N] / <channel>_next[N]) in "
        "which a preset stands for its channels, e.g. 2d,prior_dose (a cascade's second stage)",
    )
    data.add_argument(
        "--feature-cache",
        default=None,
        help="folder for built feature slices, reused by later commands on this machine",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help=f"processes building features (default {default_workers})",
    )
    data.add_argument(
        "--views",
        default="axial",
        help="slice orientations to train on, comma-separated: axial, coronal, sagittal "
        "(prediction averages the model over the same views)",
    )
    data.add_argument(
        "--inplane-spacing",
        type=float,
        default=None,
        metavar="MM",
        help="resample every patient to MM mm axial voxels (128 x 128, centred; slices unchanged) "
        "for training and validation, e.g. 3.906; validation is scored on each patient's own grid "
        "and the model card records it for prediction (default: each patient's own grid)",
    )
    data.add_argument("--slices-per-epoch", type=int, default=None, help="cap samples per epoch")
    data.add_argument("--max-train-patients", type=int, default=None, help="first N training patients")
    data.add_argument("--max-val-patients", type=int, default=None, help="first N validation patients")

    model = parser.add_argument_group("model")
    model.add_argument("--mixer", choices=("mamba2", "attention", "none"), default="mamba2")
    model.add_argument(
        "--mixer-min-level",
        type=int,
        default=None,
        help="first UNet level with a mixer (0 = full resolution)",
    )
    model.add_argument(
        "--scan-directions",
        type=int,
        default=None,
        help="Mamba scan directions: 1 (default, a raster scan), 2 (and reversed) or 4 (and transposed)",
    )
    model.add_argument("--d-state", type=int, default=None, help="Mamba-2 state size")
    model.add_argument(
        "--slab",
        type=int,
        default=1,
        metavar="K",
        help="slab mode: batches of K consecutive axial slices of one patient whose tokens every "
        "mixer scans as one sequence (context along the slice axis; --batch-size a multiple of K, "
        "axial view only; prediction runs windows of K slices); default 1, each slice on its own",
    )
    model.add_argument(
        "--model-channels", type=_int_list, default=None, help="UNet widths, e.g. 32,64,128,256"
    )
    model.add_argument("--backend", default=None, help="Mamba-2 scan backend (auto | torch | triton)")
    model.add_argument(
        "--model-option",
        type=_key_value,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any other MambaUNetConfig field (JSON value)",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=32, help="slices per step (per GPU)")
    opt.add_argument("--epochs", type=int, default=100)
    opt.add_argument("--lr", type=float, default=1e-4)
    opt.add_argument("--weight-decay", type=float, default=1e-2)
    opt.add_argument("--warmup-epochs", type=int, default=5)
    opt.add_argument(
        "--patience", type=int, default=10, help="early stopping (epochs without a better score)"
    )
    opt.add_argument(
        "--loss-beta",
        type=float,
        default=0.05,
        help="SmoothL1 threshold on the [-1, 1] dose scale (0.05 = 2 Gy)",
    )
    opt.add_argument(
        "--dvh-loss",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x the sorted DVH loss (per structure and slice, or slab with --slab, the mean "
        "absolute difference of the sorted predicted and reference doses inside it) to the SmoothL1 "
        "loss; an experiment "
        "outside the paper's recipe (default 0: the paper's loss alone)",
    )
    opt.add_argument(
        "--dvh-loss-rois",
        default="all",
        choices=DVH_LOSS_ROIS,
        help="structures the --dvh-loss term matches: all (default), the PTVs only, or the organs at risk only",
    )
    opt.add_argument("--grad-clip", type=float, default=1.0)
    opt.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (e.g. 0.999) and validate, select "
        "and export it (default 0: off)",
    )
    opt.add_argument("--seed", type=int, default=0)

    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--no-augment", action="store_true", help="no flips, no affine transforms")
    aug.add_argument("--flip-lr-p", type=float, default=0.5)
    aug.add_argument(
        "--flip-ap-p",
        type=float,
        default=0.0,
        help="probability of the anterior-posterior flip (default 0: a patient lying face down is not in "
        "the data; at 0.5, five seeds: dose score the same, DVH score 0.07 Gy worse, "
        "docs/experiments.md 'Session 17')",
    )
    aug.add_argument(
        "--transpose-p",
        type=float,
        default=0.0,
        help="probability of exchanging the two in-plane axes (a quarter turn and a mirror; with both "
        "flips at 0.5, all eight symmetries of the square; default 0; with them, three seeds: DVH score "
        "0.12 Gy worse, docs/experiments.md 'Session 17')",
    )
    aug.add_argument(
        "--lr-swap",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="swap the Left/Right structure channels on a left-right flip (default: off since "
        "session 16: a mirrored patient keeps its names, so the plans' name-tied left-right "
        "differences, e.g. the left parotid's stronger sparing, can be learnt; five seeds "
        "each, DVH score 0.08 Gy better without the swap, dose score equal; "
        "docs/experiments.md 'Session 16')",
    )
    aug.add_argument("--rotate-p", type=float, default=0.3)
    aug.add_argument("--rotate-deg", type=float, default=10.0)
    aug.add_argument("--scale-p", type=float, default=0.3)
    aug.add_argument("--scale-range", type=_range, default=(0.9, 1.1), metavar="LOW,HIGH")
    aug.add_argument("--shift-p", type=float, default=0.3)
    aug.add_argument("--shift-frac", type=float, default=0.05, help="max shift as a fraction of the size")

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda")
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the whole network (with the PyTorch scan unless --backend is given: "
        "the fastest training step measured on an H100; the first epoch pays about 1.5 min of compiling on a GPU)",
    )
    run.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile mode with --compile: default | reduce-overhead (CUDA graphs: 1.95x the "
        "default mode's training slices/s in this command on one H200, "
        "benchmarks/results/2026-11-27-session6/train_cudagraphs_*.log) | max-autotune",
    )
    run.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    run.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    run.add_argument("--val-batch-size", type=int, default=128)
    run.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop cleanly after the last epoch that fits in SECONDS from the start",
    )
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt if present")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from MambaDoseTrainingLib.train import TrainConfig, run_training

    if args.backend:
        args.model_option = [*(args.model_option or []), ("backend", args.backend)]
    config = TrainConfig.from_args(args)
    summary = run_training(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, default=str))
    return 0
