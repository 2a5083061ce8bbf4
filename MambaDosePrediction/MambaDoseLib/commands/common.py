"""Options shared by the prediction commands (``predict``, ``predict-openkbp``): one wording each."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--tta``, ``--views`` and ``--widen-ptv-hot-end``: which weights
    run where, and how."""
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
