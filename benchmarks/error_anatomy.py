"""Where a prediction's error lies: by distance from the targets, and in the parotids' sparing.

    python benchmarks/error_anatomy.py SPLIT_DIR [PRED_DIR]

For the patients of an OpenKBP split and their predictions (``pt_<N>.csv``):

1. The dose score's absolute error inside the possible-dose mask split into bands of signed
   distance to the union of the PTVs (mm, negative inside; Euclidean, voxel spacing honoured):
   each band's share of the summed error and of the voxels, its mean absolute error and mean
   signed error (predicted - reference), pooled over voxels of all patients.
2. The parotids' sparing, and whether it is the same on both sides. For each parotid (its voxels
   outside the PTVs) the residual is its mean dose minus the mean, over its voxels, of the same
   patient's dose-versus-distance profile (mean dose of all non-target voxels in 2.5 mm bins of
   distance to the PTVs): how much less dose it gets than tissue as far from the targets. Printed:
   the mean residual of each side, and the mean within-patient right-minus-left difference with
   its standard error, for the reference and for the prediction (a network trained with the
   left-right flip and its Left/Right channel swap can still learn a difference tied to the
   structure's name, not its side).

Without PRED_DIR only the reference's parotid residuals are printed (e.g. for the training split).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from MambaDoseLib import openkbp
from scipy import ndimage

BANDS_MM = (-np.inf, -5.0, 0.0, 5.0, 15.0, 30.0, 50.0, 80.0, np.inf)
PAROTIDS = ("RightParotid", "LeftParotid")
PROFILE_BIN_MM = 2.5


def ptv_union(structures) -> np.ndarray:
    names = [n for n in structures if n.startswith("PTV")]
    return np.logical_or.reduce([np.asarray(structures[n], bool) for n in names])


def parotid_residuals(dose, structures, mask, ptv, dist) -> dict[str, float]:
    bins = (dist / PROFILE_BIN_MM).astype(int)
    body = mask & ~ptv
    sums = np.bincount(bins[body], weights=dose[body])
    counts = np.bincount(bins[body])
    profile = sums / np.maximum(counts, 1)
    out = {}
    for side in PAROTIDS:
        voxels = np.asarray(structures.get(side, np.zeros_like(mask)), bool) & ~ptv
        b = bins[voxels]
        if voxels.sum() >= 5 and b.max() < profile.size:
            out[side] = float(dose[voxels].mean() - profile[b].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_dir")
    parser.add_argument("pred_dir", nargs="?")
    args = parser.parse_args(argv)
    n = len(BANDS_MM) - 1
    abs_sum, signed_sum, count = np.zeros(n), np.zeros(n), np.zeros(n)
    residuals = {"reference": [], "prediction": []} if args.pred_dir else {"reference": []}
    for folder in openkbp.list_patient_dirs(args.split_dir):
        patient = openkbp.read_patient(folder)
        mask = np.asarray(patient.possible_dose_mask, bool)
        ptv = ptv_union(patient.structures)
        outside = ndimage.distance_transform_edt(~ptv, sampling=patient.spacing_mm)
        doses = {"reference": patient.dose_gy}
        if args.pred_dir:
            pred = openkbp.read_sparse_dose(f"{args.pred_dir}/{patient.patient_id}.csv")
            doses["prediction"] = pred
            inside = ndimage.distance_transform_edt(ptv, sampling=patient.spacing_mm)
            band = np.digitize((outside - inside)[mask], BANDS_MM) - 1
            err = pred[mask] - patient.dose_gy[mask]
            abs_sum += np.bincount(band, weights=np.abs(err), minlength=n)
            signed_sum += np.bincount(band, weights=err, minlength=n)
            count += np.bincount(band, minlength=n)
        for label, dose in doses.items():
            residuals[label].append(parotid_residuals(dose, patient.structures, mask, ptv, outside))
    if args.pred_dir:
        print(f"{args.pred_dir} against {args.split_dir}: error by signed distance to the PTVs")
        print("  band (mm)        share of |error|  share of voxels  MAE (Gy)  mean error (Gy)")
    for i in range(n if args.pred_dir else 0):
        lo, hi = BANDS_MM[i], BANDS_MM[i + 1]
        print(
            f"  {lo:>6.0f} .. {hi:<6.0f} {100 * abs_sum[i] / abs_sum.sum():14.1f} % "
            f"{100 * count[i] / count.sum():14.1f} % {abs_sum[i] / count[i]:9.2f} {signed_sum[i] / count[i]:+12.2f}"
        )
    print("parotid residual (mean dose minus the patient's dose at the same distance from the PTVs)")
    for label, rows in residuals.items():
        sides = {s: [r[s] for r in rows if s in r] for s in PAROTIDS}
        diff = np.array([r["RightParotid"] - r["LeftParotid"] for r in rows if len(r) == 2])
        print(
            f"  {label:10s}: right {np.mean(sides['RightParotid']):+.2f} Gy (n {len(sides['RightParotid'])}), "
            f"left {np.mean(sides['LeftParotid']):+.2f} Gy (n {len(sides['LeftParotid'])}); right - left "
            f"{diff.mean():+.2f} +- {(diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float('nan')):.2f} Gy (n {diff.size}, "
            f"right higher in {100 * np.mean(diff > 0):.0f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
