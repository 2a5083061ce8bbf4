"""The PTV hot-end widening (``calibration.widen_ptv_hot_tail``): its table from training plans,
and its effect on predictions scored against the references.

    python benchmarks/ptv_spread_calibration.py table TRAIN_DIR
    python benchmarks/ptv_spread_calibration.py score SPLIT_DIR PRED_DIR [PRED_DIR ...] [--write DIR]
    python benchmarks/ptv_spread_calibration.py ptv-means PER_ROI_CSV

``table`` computes the mean spreads of the reference doses (``calibration.reference_spreads``) over
the patients of an OpenKBP split (the 169 training patients give ``calibration.SPREAD_GY``).
``score`` reads each folder of predictions (``pt_<N>.csv``, e.g. from ``mambadose predict-openkbp``)
and prints the dose score, the DVH score per patient and pooled, as predicted and widened, over all
patients and over the alternate halves (patients 0, 2, 4, ... and 1, 3, 5, ... in folder order), and
the mean error of every target's D_1 / D_95 / D_99. ``--write DIR`` also writes the widened doses
(``DIR/<name of PRED_DIR>/pt_<N>.csv``) for ``mambadose evaluate ... --per-roi-csv F``, and
``ptv-means F`` prints the mean predicted and reference D95 and HI over the PTV rows of such a file.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from MambaDoseLib import calibration, metrics, openkbp


def table(train_dir: str) -> None:
    patients = (openkbp.read_patient(d) for d in openkbp.list_patient_dirs(train_dir))
    spreads = calibration.reference_spreads(patients)
    for roi, (g1, g2) in spreads.items():
        print(f"{roi}: q90 - q50 {g1:.3f} Gy, q99 - q90 {g2:.3f} Gy")


def score(split_dir: str, pred_dirs: list[str], write: Path | None = None) -> None:
    dirs = openkbp.list_patient_dirs(split_dir)
    refs = []
    for d in dirs:
        patient = openkbp.read_patient(d)
        refs.append((patient, metrics.reference_dvh_metrics(patient)))
    halves = {"all": range(len(dirs)), "even": range(0, len(dirs), 2), "odd": range(1, len(dirs), 2)}
    halves = {name: idx for name, idx in halves.items() if len(idx)}
    for pred_dir in pred_dirs:
        rows = {"predicted": [], "widened": []}
        for patient, ref_metrics in refs:
            pred = openkbp.read_sparse_dose(f"{pred_dir}/{patient.patient_id}.csv")
            widened = calibration.widen_ptv_hot_tail(pred, patient.structures, patient.possible_dose_mask)
            if write is not None:
                folder = write / Path(pred_dir).name
                folder.mkdir(parents=True, exist_ok=True)
                openkbp.write_sparse_dose(folder / f"{patient.patient_id}.csv", widened)
            for label, dose in (("predicted", pred), ("widened", widened)):
                rows[label].append(metrics.score_patient(dose, patient, ref_metrics))
        print(f"{pred_dir}:")
        for label, scored in rows.items():
            parts = []
            for half, idx in halves.items():
                dose, per, pooled = metrics.score_summary([scored[i] for i in idx])
                parts.append(f"{half} {dose:.4f} / {per:.4f} / {pooled:.4f}")
            print(f"  {label:9s} dose / DVH / DVH pooled: " + "; ".join(parts))
            for roi in calibration.SPREAD_GY:
                bias = []
                for metric in ("D_1", "D_95", "D_99"):
                    key = (roi, metric)
                    err = [pm[key] - rm[key] for _, _, (pm, rm) in scored if key in pm and key in rm]
                    bias.append(f"{metric} {np.mean(err):+.2f}")
                print(f"    {roi} mean error (predicted - reference): " + ", ".join(bias))


def ptv_means(per_roi_csv: str) -> None:
    with open(per_roi_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["roi"].startswith("PTV")]
    print(f"PTV rows: {len(rows)}")
    for metric, unit, digits in (("D95", " Gy", 2), ("HI", "", 3)):
        pred = np.mean([float(r[f"pred_{metric}"]) for r in rows])
        ref = np.mean([float(r[f"ref_{metric}"]) for r in rows])
        print(f"mean predicted {metric}: {pred:.{digits}f}{unit} (reference {ref:.{digits}f}{unit})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("train_dir")
    s = sub.add_parser("score")
    s.add_argument("split_dir")
    s.add_argument("pred_dirs", nargs="+")
    s.add_argument("--write", type=Path, metavar="DIR", help="also write the widened doses under DIR")
    m = sub.add_parser("ptv-means")
    m.add_argument("per_roi_csv")
    args = parser.parse_args(argv)
    if args.command == "table":
        table(args.train_dir)
    elif args.command == "score":
        score(args.split_dir, args.pred_dirs, args.write)
    else:
        ptv_means(args.per_roi_csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
