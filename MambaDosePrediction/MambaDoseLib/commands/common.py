"""Options shared by the prediction commands (``predict``, ``predict-openkbp``): one wording each."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--tta``, ``--views``, ``--widen-ptv-hot-end``, ``--dvh-model``
    and ``--dvh-weight``: which weights run where, and how."""
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="weights (.safetensors; default: the shipped model; 'ensemble': the shipped ensemble)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (default: auto)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over the left-right flip (test-time augmentation): twice the time, lower error "
        "(shipped network on OpenKBP validation: dose score 2.80 instead of 2.87 Gy); a network "
        "trained with the anterior-posterior flip too is averaged over all four flips",
    )
    parser.add_argument(
        "--views",
        metavar="V[,V...]",
        help="slice orientations to average (axial, coronal, sagittal; default: those the model was "
        "trained on, from its card); fewer views run faster",
    )
    parser.add_argument(
        "--widen-ptv-hot-end",
        action="store_true",
        help="widen the predicted dose's hot end inside each PTV to at least the spread of the OpenKBP "
        "training plans (calibration.widen_ptv_hot_tail; shipped ensemble with --tta on OpenKBP "
        "validation: DVH score 1.686 instead of 1.730 Gy pooled, dose score 0.002 Gy higher)",
    )
    parser.add_argument(
        "--dvh-model",
        type=Path,
        metavar="FILE",
        help="a second model (e.g. trained with --dvh-loss) whose dose is mixed in inside the structures "
        "only, where the DVH metrics are read (dvh_stream.compose; 5 mm ramp outside them): the DVH "
        "metrics follow it, the dose elsewhere stays --model's; 'dvh': the shipped DVH stream (three "
        "DVH-term networks)",
    )
    parser.add_argument(
        "--dvh-weight",
        type=float,
        metavar="W",
        help="share of --dvh-model's dose inside the structures, in [0, 1] (default 2/3: on OpenKBP "
        "validation, the shipped ensemble and DVH stream with --tta, widened: DVH score 1.648 instead "
        "of 1.684 Gy pooled, dose score 0.006 Gy higher)",
    )


def dvh_stream_arguments(args: argparse.Namespace) -> tuple[Path | None, float]:
    """``(--dvh-model, --dvh-weight)`` checked: a weight needs a model and lies in [0, 1]."""
    from MambaDoseLib.dvh_stream import DEFAULT_WEIGHT
    from MambaDoseLib.errors import InputError

    if args.dvh_weight is not None and args.dvh_model is None:
        raise InputError("--dvh-weight needs --dvh-model")
    weight = DEFAULT_WEIGHT if args.dvh_weight is None else args.dvh_weight
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"--dvh-weight must lie in [0, 1], got {weight}")
    return args.dvh_model, weight
