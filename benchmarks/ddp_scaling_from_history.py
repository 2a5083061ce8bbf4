"""Multi-GPU throughput scaling from two training histories (``history.csv`` of ``mambadose train``).

    python benchmarks/ddp_scaling_from_history.py [ONE_GPU.csv TWO_GPU.csv] [--skip-one N] [--skip-two N]

Defaults: the session-2 runs in benchmarks/results/2026-11-27-multiview (1 GPU and 2 GPUs, run side
by side on one host). The first epochs of a call (Triton compilation, cuDNN autotuning) are left
out: ``--skip-*`` epochs from the start of each history (defaults: the epochs up to and including
the first one after each run's restart).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "2026-11-27-multiview"


def rates(path: Path, skip: int) -> list[float]:
    with open(path) as f:
        return [float(row["slices_per_s"]) for row in csv.DictReader(f)][skip:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("one", nargs="?", type=Path, default=RESULTS / "mamba_views3_1gpu_history.csv")
    parser.add_argument("two", nargs="?", type=Path, default=RESULTS / "mamba_views3_2gpu_history.csv")
    parser.add_argument("--skip-one", type=int, default=3)
    parser.add_argument("--skip-two", type=int, default=5)
    args = parser.parse_args()
    one = statistics.median(rates(args.one, args.skip_one))
    two = statistics.median(rates(args.two, args.skip_two))
    print(
        f"1 GPU: {one:,.0f} slices/s; 2 GPUs: {two:,.0f} slices/s; scaling {two / one:.2f}x "
        f"({100 * two / one / 2:.0f} % efficiency)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
