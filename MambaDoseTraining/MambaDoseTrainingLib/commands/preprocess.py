"""``mambadose preprocess``: OpenKBP split folder -> compact patient cache (``cache.build_cache``)."""

from __future__ import annotations

import argparse
import os

HELP = "cache an OpenKBP split (pt_<N>/ folders) as compact lzma files for training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_workers = max(1, min(8, os.cpu_count() or 1))
    parser.add_argument("split_dir", help="OpenKBP split folder holding pt_<N>/ patient folders")
    parser.add_argument("cache_dir", help="output folder (created): <patient>.npz.xz files + index.json")
    parser.add_argument(
        "--workers", type=int, default=default_workers, help=f"processes (default {default_workers})"
    )
    parser.add_argument(
        "--require-dose", action="store_true", help="fail on a patient without dose.csv (training splits)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from MambaDoseLib.errors import InputError

    from MambaDoseTrainingLib.cache import build_cache

    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    summary = build_cache(
        args.split_dir,
        args.cache_dir,
        progress=not args.no_progress,
        workers=args.workers,
        require_dose=args.require_dose,
    )
    print(
        f"cached {summary['patients']} patients in {summary['cache_dir']}: "
        f"{summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.0f} s"
        + (f", {len(summary['warnings'])} warnings (logged)" if summary["warnings"] else "")
    )
    return 0
