"""How much of a prediction's dose score one number per patient could remove (an oracle bound).

    python benchmarks/oracle_level.py SPLIT_DIR PRED_DIR [PRED_DIR ...]

For every patient of an OpenKBP split and each folder of predictions (``pt_<N>.csv``), the dose
score (``metrics.dose_score``) of the prediction as it is and after one correction chosen per
patient with the reference dose in hand, so each is a bound on what a model of the patient's dose
*level* could gain, not a method:

- ``scale``: ``a * pred`` with ``a`` minimising ``sum |a * pred - ref|`` over the possible-dose mask
  (the weighted median of ``ref / pred`` with weights ``pred``);
- ``offset``: ``pred + b`` inside the mask (``b`` the median of ``ref - pred``), then clipped at 0;
- ``ptv70 D95``: ``a * pred`` with ``a`` = reference / predicted D95 of PTV70, i.e. the correction
  a known normalisation of the plan's highest target would give.

Printed per folder: the mean dose score of each, and the mean and standard deviation over patients
of the oracle scale ``a``. If the scale oracle removes little, the error is spatial (where the dose
goes), not the level of the plan.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from MambaDoseLib import openkbp
from MambaDoseLib.metrics import dose_at_volume_percent, dose_score


def oracle_scale(pred: np.ndarray, ref: np.ndarray) -> float:
    """The ``a`` >= 0 minimising ``sum |a * pred - ref|`` (1-D arrays): weighted median of
    ``ref / pred`` with weights ``pred`` over the voxels where ``pred`` > 0 (1 when there are none)."""
    keep = pred > 0
    if not keep.any():
        return 1.0
    ratio, weight = ref[keep] / pred[keep], pred[keep]
    order = np.argsort(ratio)
    cumulative = np.cumsum(weight[order])
    return float(ratio[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def corrected_scores(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, ptv70: np.ndarray | None) -> dict:
    """Dose scores of ``pred`` as it is and after each oracle correction (module doc), and ``a``."""
    inside = mask.astype(bool)
    a = oracle_scale(pred[inside], ref[inside])
    b = float(np.median(ref[inside] - pred[inside]))
    out = {
        "as predicted": dose_score(pred, ref, mask),
        "scale": dose_score(a * pred, ref, mask),
        "offset": dose_score(np.where(inside, np.maximum(pred + b, 0.0), 0.0), ref, mask),
        "a": a,
    }
    if ptv70 is not None and ptv70.any():
        ratio = dose_at_volume_percent(ref[ptv70], 95.0) / dose_at_volume_percent(pred[ptv70], 95.0)
        out["ptv70 D95"] = dose_score(ratio * pred, ref, mask)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_dir")
    parser.add_argument("pred_dirs", nargs="+")
    args = parser.parse_args(argv)
    rows: dict[str, list[dict]] = {d: [] for d in args.pred_dirs}
    for folder in openkbp.list_patient_dirs(args.split_dir):
        patient = openkbp.read_patient(folder)
        ptv70 = patient.structures.get("PTV70")
        for pred_dir in args.pred_dirs:
            pred = openkbp.read_sparse_dose(f"{pred_dir}/{patient.patient_id}.csv")
            rows[pred_dir].append(
                corrected_scores(
                    pred,
                    patient.dose_gy,
                    patient.possible_dose_mask,
                    None if ptv70 is None else ptv70.astype(bool),
                )
            )
    print(
        f"{len(next(iter(rows.values())))} patients of {args.split_dir}; dose score (Gy), mean over patients"
    )
    for pred_dir, patient_rows in rows.items():
        keys = [k for k in patient_rows[0] if k != "a"]
        scales = np.array([r["a"] for r in patient_rows])
        figures = ", ".join(f"{k} {np.mean([r[k] for r in patient_rows if k in r]):.4f}" for k in keys)
        print(f"{pred_dir}: {figures}; oracle scale a {scales.mean():.4f} +- {scales.std(ddof=1):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
