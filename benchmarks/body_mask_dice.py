"""Dice of the CT-only body mask (``features.body_mask_from_ct``) against OpenKBP's possible-dose mask.

    python benchmarks/body_mask_dice.py [--split /tmp/openkbp/validation-pats]

Three regions per patient (one line each, then the mean and median over patients):
- ``full``: the whole volume;
- ``extent``: the axial slices where the possible-dose mask has any voxel (its axial extent
  follows the planning system's dose grid, which the CT cannot show);
- ``core``: the slices of that extent where the possible-dose mask holds >= 90 % as many voxels as
  the body mask, i.e. without the partial, speckled end slices of the dose grid. This region
  depends on the body mask itself; read it beside the other two.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from MambaDoseLib.features import body_mask_from_ct
from MambaDoseLib.openkbp import list_patient_dirs, read_patient


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def scores(body: np.ndarray, possible: np.ndarray) -> tuple[float, float, float]:
    """Dice over (full volume, possible-dose mask's axial extent, core slices)."""
    extent = possible.any(axis=(0, 1))
    core = extent & (possible.sum(axis=(0, 1)) >= 0.9 * body.sum(axis=(0, 1)))
    return (
        dice(body, possible),
        dice(body[..., extent], possible[..., extent]),
        dice(body[..., core], possible[..., core]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    args = parser.parse_args()
    rows, seconds = [], []
    print("patient    full  extent  core")
    for folder in list_patient_dirs(args.split):
        patient = read_patient(folder)
        start = time.perf_counter()
        body = body_mask_from_ct(patient.ct, patient.spacing_mm)
        seconds.append(time.perf_counter() - start)
        rows.append(scores(body, patient.possible_dose_mask))
        print(f"{patient.patient_id:9s} " + "  ".join(f"{x:.3f}" for x in rows[-1]))
    table = np.array(rows)
    print("mean      " + "  ".join(f"{x:.3f}" for x in table.mean(axis=0)))
    print("median    " + "  ".join(f"{x:.3f}" for x in np.median(table, axis=0)))
    print(f"patients with extent Dice >= 0.95: {(table[:, 1] >= 0.95).sum()} of {len(rows)}")
    print(f"body_mask_from_ct: {np.mean(seconds) * 1e3:.0f} ms per patient")


if __name__ == "__main__":
    main()
