"""``mambadose evaluate REFERENCE_DIR PREDICTIONS_DIR``: score predicted doses the OpenKBP way.

REFERENCE_DIR is an OpenKBP split folder (``pt_<N>/`` with dose.csv, masks, voxel_dimensions.csv);
PREDICTIONS_DIR holds ``pt_<N>.csv`` in the submission format. Prints mean +- std over patients of
the key figures; the last two lines are exactly ``dose_score <value>`` (mean of the per-patient 3D
dose scores) and ``dvh_score <value>`` (the challenge's DVH score, pooled over every patient's
(ROI, metric) pairs), 4 decimals. The metric definitions live in :mod:`MambaDoseLib.metrics`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

HELP = "score predicted doses against an OpenKBP split (dose score, DVH score, isodose Dice, ROI metrics)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reference_dir", type=Path, metavar="REFERENCE_DIR", help="OpenKBP split folder (pt_*/)"
    )
    parser.add_argument(
        "predictions_dir", type=Path, metavar="PREDICTIONS_DIR", help="folder of pt_<N>.csv predictions"
    )
    parser.add_argument("--csv", type=Path, metavar="OUT.csv", help="write one row of scores per patient")
    parser.add_argument(
        "--per-roi-csv",
        type=Path,
        metavar="FILE",
        help="write reference and predicted metrics per patient and ROI",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print where the DVH score comes from: per ROI and metric the mean |error|, "
        "the mean signed error (a bias) and the share of the score",
    )


def patient_row(ev: Any) -> dict[str, Any]:
    """One CSV row of per-patient scores from a :class:`metrics.PatientEvaluation`."""
    return {
        "patient_id": ev.patient_id,
        "dose_score": ev.dose_score,
        "dvh_score": ev.dvh_score,
        "slice_dose_score_paper": ev.slice_dose_score,
        "prescription_gy": ev.prescription_gy,
        **ev.isodose_dice,
        "n_dvh_pairs": len(set(ev.pred_dvh) & set(ev.ref_dvh)),
    }


def roi_rows(ev: Any) -> list[dict[str, Any]]:
    """CSV rows (one per ROI) with ``ref_<metric>``, ``pred_<metric>`` and ``diff_<metric>`` columns."""
    from MambaDoseLib.metrics import ROI_METRIC_NAMES
    from MambaDoseLib.rois import ROI_BY_NAME

    rows = []
    for roi, m in ev.rois.items():
        row: dict[str, Any] = {"patient_id": ev.patient_id, "roi": roi, "kind": ROI_BY_NAME[roi].kind}
        for name in ROI_METRIC_NAMES:
            row[f"ref_{name}"] = m["ref"][name]
            row[f"pred_{name}"] = m["pred"][name]
            row[f"diff_{name}"] = m["pred"][name] - m["ref"][name]
        rows.append(row)
    return rows


def write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV through a temporary file in the same folder and an atomic rename."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    import numpy as np

    finite = np.asarray([v for v in values if math.isfinite(v)], float)
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def summary_lines(evaluations: list[Any], pooled_dvh_score: float) -> list[str]:
    """Human-readable summary; the last two lines are ``dose_score X`` and ``dvh_score Y``."""
    rows = [patient_row(ev) for ev in evaluations]
    labels = {
        "dose_score": "dose score (3D, OpenKBP), Gy",
        "dvh_score": "DVH score per patient, Gy",
        "slice_dose_score_paper": "dose score averaged over slices first (paper's variant), Gy",
        "dice_50": "isodose Dice at 50 % of the highest prescription",
        "dice_80": "isodose Dice at 80 %",
        "dice_95": "isodose Dice at 95 %",
        "dice_100": "isodose Dice at 100 %",
    }
    lines = [f"patients evaluated: {len(rows)}"]
    for key, label in labels.items():
        mean, std, n = _mean_std([r[key] for r in rows if key in r])
        lines.append(f"  {label}: {mean:.4f} ± {std:.4f} (n = {n})")
    lines.append(
        f"  DVH score pooled over patients and (ROI, metric) pairs (challenge), Gy: {pooled_dvh_score:.4f}"
    )
    if len(rows) > 1:  # how much the means depend on which patients were scored
        from MambaDoseLib.metrics import bootstrap_mean_ci

        dose_ci = bootstrap_mean_ci([r["dose_score"] for r in rows])
        dvh_ci = bootstrap_mean_ci([r["dvh_score"] for r in rows if "dvh_score" in r])
        lines.append(
            "  95 % interval of the means over patients (bootstrap over patients, 10,000 resamples), Gy: "
            f"dose score {dose_ci[0]:.3f}-{dose_ci[1]:.3f}, DVH score per patient {dvh_ci[0]:.3f}-{dvh_ci[1]:.3f}"
        )
    mean_dose, _, _ = _mean_std([r["dose_score"] for r in rows])
    lines.append(f"dose_score {mean_dose:.4f}")
    lines.append(f"dvh_score {pooled_dvh_score:.4f}")
    return lines


def _prediction_paths(reference_dirs: list[Path], predictions_dir: Path) -> list[Path]:
    from MambaDoseLib.errors import InputError

    if not predictions_dir.is_dir():
        raise InputError(f"{predictions_dir}: predictions folder does not exist")
    paths = [predictions_dir / f"{d.name}.csv" for d in reference_dirs]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"{predictions_dir}: no prediction for {len(missing)} reference patient(s): {shown}")
    expected = {p.name for p in paths}
    extra = sorted(p.name for p in predictions_dir.glob("pt_*.csv") if p.name not in expected)
    if extra:
        log.warning(
            "%d prediction(s) without a reference patient ignored: %s", len(extra), ", ".join(extra[:10])
        )
    return paths


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from MambaDoseLib import metrics, openkbp
    from MambaDoseLib.errors import InputError

    reference_dirs = openkbp.list_patient_dirs(args.reference_dir)
    if not reference_dirs:
        raise InputError(f"{args.reference_dir}: no pt_* patient folders found")
    prediction_paths = _prediction_paths(reference_dirs, args.predictions_dir)

    evaluations = []
    for folder, pred_path in tqdm(
        list(zip(reference_dirs, prediction_paths, strict=True)), desc="evaluate", unit="patient"
    ):
        patient = openkbp.read_patient(folder)
        if patient.dose_gy is None:
            raise InputError(f"{folder}: reference patient has no dose.csv")
        pred_gy = openkbp.read_sparse_dose(pred_path, shape=patient.shape)
        evaluations.append(
            metrics.evaluate_patient(
                pred_gy,
                patient.dose_gy,
                patient.possible_dose_mask,
                patient.structures,
                patient.voxel_volume_mm3,
                patient_id=patient.patient_id,
            )
        )
        log.debug("%s: dose score %.4f Gy", patient.patient_id, evaluations[-1].dose_score)

    pooled = metrics.dvh_score_pooled((ev.pred_dvh, ev.ref_dvh) for ev in evaluations)
    if args.csv:
        write_csv_atomic(args.csv, [patient_row(ev) for ev in evaluations])
        log.info("per-patient scores written to %s", args.csv)
    if args.per_roi_csv:
        write_csv_atomic(args.per_roi_csv, [row for ev in evaluations for row in roi_rows(ev)])
        log.info("per-ROI metrics written to %s", args.per_roi_csv)
    if args.breakdown:
        rows = metrics.dvh_error_breakdown((ev.pred_dvh, ev.ref_dvh) for ev in evaluations)
        print("\n".join(breakdown_lines(rows)))
    print("\n".join(summary_lines(evaluations, pooled)), flush=True)
    return 0


def breakdown_lines(rows: list) -> list[str]:
    """The DVH error breakdown (:func:`metrics.dvh_error_breakdown`) as a printed table."""
    lines = [
        "DVH score by ROI and metric (error = predicted - reference):",
        f"  {'ROI':14s} {'metric':9s} {'pairs':>5s} {'mean |error| Gy':>16s} {'mean error Gy':>14s} {'share':>6s}",
    ]
    for r in rows:
        lines.append(
            f"  {r.roi:14s} {r.metric:9s} {r.n:5d} {r.mae:16.3f} {r.bias:+14.3f} {100 * r.share:5.1f}%"
        )
    return lines
