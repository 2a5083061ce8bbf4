"""Dice of the CT-only body mask (``features.body_mask_from_ct``) against OpenKBP's possible-dose mask.

    python benchmarks/body_mask_dice.py [--split /tmp/openkbp/validation-pats]

Three regions per patient (one column each, then the mean and median over patients):
- ``full``: the whole volume (the figure the acceptance target of 0.95 refers to);
- ``extent``: the axial slices where the possible-dose mask has any voxel (its axial extent
  follows the planning system's dose grid, which the CT cannot show);
- ``core``: the slices of that extent where the possible-dose mask holds >= 90 % as many voxels as
  the body mask, i.e. without the partial, speckled end slices of the dose grid. This region
  depends on the body mask itself; read it beside the other two.

``extent`` is also the full-volume Dice of an oracle that cuts the body mask to the possible-dose
mask's axial extent (the mask has no voxel outside it). A second oracle, ``oracle_sl``, keeps the
body mask only on slices where the possible-dose mask holds >= half as many voxels as the body mask
(keeping a slice raises the Dice only when that fraction exceeds about Dice / 2, so this is close
to the best choice of slices). Both read the possible-dose mask, so no CT-only rule can use them;
they bound any rule that keeps the body's outline and only chooses axial slices.

Then the full-volume Dice loss (1 - Dice) split by where the disagreeing voxels (body XOR
possible-dose mask) lie, as a mean over patients: slices outside the extent, partial end slices
(extent minus core) and core slices; the three add up to the mean loss.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from MambaDoseLib.features import body_mask_from_ct
from MambaDoseLib.openkbp import list_patient_dirs, read_patient

COLUMNS = ("full", "extent", "core", "oracle_sl")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def scores(body: np.ndarray, possible: np.ndarray) -> tuple[float, ...]:
    """Dice over (full volume, possible-dose mask's axial extent, core slices), then the
    full-volume Dice of the slice oracle (see the module docstring)."""
    body_per_slice = body.sum(axis=(0, 1))
    possible_per_slice = possible.sum(axis=(0, 1))
    extent = possible_per_slice > 0
    core = extent & (possible_per_slice >= 0.9 * body_per_slice)
    majority = possible_per_slice >= 0.5 * body_per_slice
    return (
        dice(body, possible),
        dice(body[..., extent], possible[..., extent]),
        dice(body[..., core], possible[..., core]),
        dice(body & majority, possible),
    )


def loss_split(body: np.ndarray, possible: np.ndarray) -> tuple[float, float, float]:
    """Full-volume Dice loss split into (outside the extent, partial end slices, core slices)."""
    body_per_slice = body.sum(axis=(0, 1))
    possible_per_slice = possible.sum(axis=(0, 1))
    disagree = (body ^ possible).sum(axis=(0, 1))
    extent = possible_per_slice > 0
    core = extent & (possible_per_slice >= 0.9 * body_per_slice)
    total = max(1, body_per_slice.sum() + possible_per_slice.sum())
    return tuple(float(disagree[region].sum() / total) for region in (~extent, extent & ~core, core))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    args = parser.parse_args()
    rows, losses, seconds = [], [], []
    print("patient   " + "  ".join(f"{name:>10s}" for name in COLUMNS))
    for folder in list_patient_dirs(args.split):
        patient = read_patient(folder)
        start = time.perf_counter()
        body = body_mask_from_ct(patient.ct, patient.spacing_mm)
        seconds.append(time.perf_counter() - start)
        rows.append(scores(body, patient.possible_dose_mask))
        losses.append(loss_split(body, patient.possible_dose_mask))
        print(f"{patient.patient_id:9s} " + "  ".join(f"{x:10.3f}" for x in rows[-1]))
    table = np.array(rows)
    print("mean      " + "  ".join(f"{x:10.3f}" for x in table.mean(axis=0)))
    print("median    " + "  ".join(f"{x:10.3f}" for x in np.median(table, axis=0)))
    print(f"patients with full-volume Dice >= 0.95: {(table[:, 0] >= 0.95).sum()} of {len(rows)}")
    print(f"patients with extent Dice >= 0.95: {(table[:, 1] >= 0.95).sum()} of {len(rows)}")
    outside, partial, core = np.array(losses).mean(axis=0)
    print(
        f"full-volume Dice loss {1 - table[:, 0].mean():.3f} = outside the extent {outside:.3f}"
        f" + partial end slices {partial:.3f} + core slices {core:.3f}"
    )
    print(f"body_mask_from_ct: {np.mean(seconds) * 1e3:.0f} ms per patient")


if __name__ == "__main__":
    main()
