"""Is the too homogeneous predicted target dose a cheap fix? Stretch it inside each PTV, cross-validated.

    python benchmarks/ptv_contrast_sweep.py PREDICTIONS_DIR [--split /tmp/openkbp/validation-pats]
        [--factors 1,1.1,1.2,1.3,1.4]

PREDICTIONS_DIR holds ``pt_<N>.csv`` from ``mambadose predict-openkbp``. For each factor k, the
predicted dose inside each PTV (PTV56, then PTV63, then PTV70, so an overlap takes the higher
prescription's) becomes ``median + k * (dose - median)`` (the PTV's own median of the prediction;
negative doses set to 0); k = 1 is the prediction as it is. Printed per k: dose score, DVH score
(mean of patients and pooled) over all patients; then a two-fold cross-validation over the
patients (even / odd position): k chosen on one half by the pooled DVH score, scored on the other.
A measurement for deciding what to train next, not a step of the shipped prediction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from MambaDoseLib import metrics, openkbp
from MambaDoseLib.rois import PRESCRIPTION_GY, TARGET_NAMES


def stretch_targets(dose_gy: np.ndarray, structures: dict, factor: float) -> np.ndarray:
    """The dose with each PTV's values spread by ``factor`` about their median (see module doc)."""
    out = dose_gy.astype(np.float32, copy=True)
    for name in sorted(TARGET_NAMES, key=PRESCRIPTION_GY.get):
        mask = structures.get(name)
        if mask is None or not mask.any():
            continue
        values = dose_gy[mask]
        median = np.float32(np.median(values))
        out[mask] = np.maximum(median + np.float32(factor) * (values - median), 0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--factors", default="1,1.1,1.2,1.3,1.4")
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    # per factor, per patient: (dose score, pred DVH metrics, ref DVH metrics)
    rows: dict[float, list[tuple[float, dict, dict]]] = {k: [] for k in factors}
    for folder in openkbp.list_patient_dirs(args.split):
        patient = openkbp.read_patient(folder)
        pred = openkbp.read_sparse_dose(args.predictions / f"{folder.name}.csv", shape=patient.shape)
        ref = metrics.reference_dvh_metrics(patient)
        for k in factors:
            dose = stretch_targets(pred, patient.structures, k)
            rows[k].append(
                (
                    metrics.dose_score(dose, patient.dose_gy, patient.possible_dose_mask),
                    metrics.openkbp_dvh_metrics(dose, patient.structures, patient.voxel_volume_mm3),
                    ref,
                )
            )

    def scores(k: float, which: list[int]) -> tuple[float, float, float]:
        sel = [rows[k][i] for i in which]
        dose = float(np.mean([r[0] for r in sel]))
        dvh = float(np.mean([metrics.dvh_score(r[1], r[2]) for r in sel]))
        return dose, dvh, metrics.dvh_score_pooled((r[1], r[2]) for r in sel)

    n = len(rows[factors[0]])
    everyone = list(range(n))
    print(f"{n} patients of {args.split}, predictions {args.predictions}")
    print(f"{'factor':>6} {'dose score':>10} {'DVH score':>10} {'DVH pooled':>10}")
    for k in factors:
        print(f"{k:6.2f} " + " ".join(f"{x:10.4f}" for x in scores(k, everyone)))
    halves = (everyone[0::2], everyone[1::2])
    for fit, test in (halves, halves[::-1]):
        best = min(factors, key=lambda k: scores(k, fit)[2])
        held, same = scores(best, test), scores(1.0, test) if 1.0 in factors else None
        line = f"fold of {len(test)}: k = {best:.2f} chosen on the other half; here dose / DVH / pooled "
        line += " / ".join(f"{x:.4f}" for x in held)
        if same:
            line += "  (k = 1: " + " / ".join(f"{x:.4f}" for x in same) + ")"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
