"""Dose and DVH metrics: the one place that says how D95, the dose score or an isodose Dice is computed.

Conventions (all doses in Gy, all arrays on one grid, masks bool of the same shape):

- ``Dx`` is the dose received by at least ``x`` % of the ROI's volume, i.e. the ``100 - x``
  percentile of the ROI's voxel doses (``np.percentile``, default linear interpolation). So
  ``D99 = percentile 1``, ``D1 = percentile 99``.
- ``D_0.1cc`` follows the OpenKBP challenge literally: ``n = max(1, round(100 / voxel_volume_mm3))``
  voxels make 0.1 cc (100 mm^3) and ``D_0.1cc = percentile(100 - n / size * 100)``; for an ROI
  smaller than ``n`` voxels the percentile is clamped to 0 (the challenge's code would fail).
- An empty mask gives NaN metrics (never an exception), and NaN metrics are left out of scores.

Benchmark scores (OpenKBP, Babier et al. 2021):

- :func:`dose_score`: ``sum(|pred - ref|)`` over ALL voxels / ``sum(possible_dose_mask)``, per
  patient; the benchmark reports the mean over patients.
- :func:`dvh_score_pooled`: the challenge's DVH score, the mean absolute difference over every
  (patient, ROI, metric) triple that exists (pooled). :func:`dvh_score` is the same for one patient;
  the mean of per-patient :func:`dvh_score` values is a (slightly different) per-patient variant.

Paper variants (labelled as such wherever they are reported):

- :func:`slice_dose_score`: the dose error averaged over axial slices first (then over patients).
- :func:`isodose_dice`, :func:`isodose_dice_levels`: Dice of predicted vs reference isodose volumes
  at 50/80/95/100 % of the patient's highest prescription.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rois import MAX_PRESCRIPTION_GY, OAR_NAMES, PRESCRIPTION_GY, TARGET_NAMES

#: Challenge metric names (as in the OpenKBP reference evaluation).
OAR_METRICS: tuple[str, ...] = ("D_0.1_cc", "mean")
TARGET_METRICS: tuple[str, ...] = ("D_99", "D_95", "D_1")

#: Keys of :func:`roi_metrics`, in CSV column order.
ROI_METRIC_NAMES: tuple[str, ...] = (
    "volume_cc",
    "Dmean",
    "D_0.1cc",
    "D1",
    "D2",
    "D50",
    "D95",
    "D98",
    "D99",
    "HI",
    "V95",
)

#: Isodose levels of the paper, as fractions of the highest prescription.
ISODOSE_FRACTIONS: tuple[float, ...] = (0.5, 0.8, 0.95, 1.0)

_CC_PER_MM3 = 1e-3
_TENTH_CC_MM3 = 100.0


def _check_same_shape(*arrays: np.ndarray) -> None:
    shapes = {tuple(np.shape(a)) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays differ in shape: {sorted(shapes)}")


# --------------------------------------------------------------------------- dose scores


def dose_score(pred_gy: np.ndarray, ref_gy: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """OpenKBP dose score of one patient (Gy): ``sum(|pred - ref|)`` over all voxels / mask voxels.

    pred_gy, ref_gy: (I, J, K) dose in Gy; possible_dose_mask: bool (I, J, K). The sum runs over the
    whole volume, so dose predicted outside the mask counts as error. NaN for an empty mask.
    """
    _check_same_shape(pred_gy, ref_gy, possible_dose_mask)
    n_mask = int(np.count_nonzero(possible_dose_mask))
    if n_mask == 0:
        return math.nan
    diff = np.abs(np.asarray(pred_gy, np.float64) - np.asarray(ref_gy, np.float64))
    return float(diff.sum() / n_mask)


def slice_dose_score(pred_gy: np.ndarray, ref_gy: np.ndarray, mask: np.ndarray) -> float:
    """The paper's slice-averaged dose score (Gy): NOT the benchmark's 3D dose score.

    For every axial slice ``k`` (axis 2) holding at least one mask voxel:
    ``sum(|pred - ref|)`` over that whole slice / mask voxels on that slice; the result is the mean
    over those slices (average over patients afterwards). NaN for an empty mask.
    """
    _check_same_shape(pred_gy, ref_gy, mask)
    per_slice_voxels = np.count_nonzero(mask, axis=(0, 1))  # (K,)
    slices = np.flatnonzero(per_slice_voxels)
    if slices.size == 0:
        return math.nan
    diff = np.abs(np.asarray(pred_gy, np.float64) - np.asarray(ref_gy, np.float64))
    per_slice_error = diff.sum(axis=(0, 1))  # (K,)
    return float(np.mean(per_slice_error[slices] / per_slice_voxels[slices]))


# --------------------------------------------------------------------------- DVH points


def dose_at_volume_percent(roi_dose_gy: np.ndarray, volume_percent: float) -> float:
    """``Dx``: the dose (Gy) received by at least ``volume_percent`` % of the ROI.

    roi_dose_gy: 1-D doses of the ROI's voxels. Equals ``np.percentile(roi_dose, 100 - x)``;
    NaN when the ROI is empty.
    """
    if roi_dose_gy.size == 0:
        return math.nan
    return float(np.percentile(roi_dose_gy, 100.0 - volume_percent))


def tenth_cc_voxels(voxel_volume_mm3: float) -> int:
    """Number of voxels the challenge counts as 0.1 cc: ``max(1, round(100 / voxel_volume_mm3))``."""
    if not voxel_volume_mm3 > 0:
        raise ValueError(f"voxel volume must be positive, got {voxel_volume_mm3} mm^3")
    return max(1, int(np.round(_TENTH_CC_MM3 / voxel_volume_mm3)))


def d_tenth_cc(roi_dose_gy: np.ndarray, voxel_volume_mm3: float) -> float:
    """``D_0.1cc`` (Gy) as the challenge defines it: ``percentile(100 - n / size * 100)``.

    n = :func:`tenth_cc_voxels`; the percentile is clamped at 0 for ROIs of fewer than n voxels.
    NaN when the ROI is empty.
    """
    size = roi_dose_gy.size
    if size == 0:
        return math.nan
    q = 100.0 - tenth_cc_voxels(voxel_volume_mm3) / size * 100.0
    return float(np.percentile(roi_dose_gy, max(0.0, q)))


# --------------------------------------------------------------------------- challenge DVH metrics


def openkbp_dvh_metrics(
    dose_gy: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float
) -> dict[tuple[str, str], float]:
    """The challenge's DVH metrics of one dose for one patient's ROIs.

    dose_gy: (I, J, K) Gy; structures: ROI name -> bool (I, J, K) mask; voxel_volume_mm3: mm^3.
    Returns ``{(roi, metric): Gy}``: OARs get ``D_0.1_cc`` and ``mean``; targets ``D_99``, ``D_95``,
    ``D_1`` (percentiles 1, 5, 99). ROIs that are absent, empty or not in the ROI table are left out.
    """
    out: dict[tuple[str, str], float] = {}
    for roi, mask in structures.items():
        _check_same_shape(dose_gy, mask)
        roi_dose = np.asarray(dose_gy)[np.asarray(mask, bool)]
        if roi_dose.size == 0:
            continue
        roi_dose = roi_dose.astype(np.float64)
        if roi in OAR_NAMES:
            out[(roi, "D_0.1_cc")] = d_tenth_cc(roi_dose, voxel_volume_mm3)
            out[(roi, "mean")] = float(roi_dose.mean())
        elif roi in TARGET_NAMES:
            out[(roi, "D_99")] = float(np.percentile(roi_dose, 1))
            out[(roi, "D_95")] = float(np.percentile(roi_dose, 5))
            out[(roi, "D_1")] = float(np.percentile(roi_dose, 99))
    return out


def dvh_errors(
    pred_metrics: Mapping[tuple[str, str], float], ref_metrics: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    """``|pred - ref|`` (Gy) for every (roi, metric) key finite in both dicts."""
    out = {}
    for key, ref in ref_metrics.items():
        pred = pred_metrics.get(key, math.nan)
        if math.isfinite(pred) and math.isfinite(ref):
            out[key] = abs(pred - ref)
    return out


def dvh_score(
    pred_metrics: Mapping[tuple[str, str], float], ref_metrics: Mapping[tuple[str, str], float]
) -> float:
    """DVH score of one patient (Gy): mean ``|pred - ref|`` over the (roi, metric) pairs in both.

    NaN when no pair is shared. For the challenge's figure over several patients use
    :func:`dvh_score_pooled`.
    """
    errors = list(dvh_errors(pred_metrics, ref_metrics).values())
    return float(np.mean(errors)) if errors else math.nan


def dvh_score_pooled(
    patients: Iterable[tuple[Mapping[tuple[str, str], float], Mapping[tuple[str, str], float]]],
) -> float:
    """The challenge's DVH score (Gy): mean ``|pred - ref|`` pooled over all patients' pairs.

    patients: one ``(pred_metrics, ref_metrics)`` per patient. Patients with many contoured ROIs
    weigh more than in the mean of per-patient :func:`dvh_score` values. NaN when nothing is shared.
    """
    errors: list[float] = []
    for pred, ref in patients:
        errors.extend(dvh_errors(pred, ref).values())
    return float(np.mean(errors)) if errors else math.nan


def score_prediction(
    pred_gy: np.ndarray,
    ref_gy: np.ndarray,
    possible_dose_mask: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_volume_mm3: float,
    ref_metrics: Mapping[tuple[str, str], float],
) -> tuple[float, float, tuple[dict[tuple[str, str], float], Mapping[tuple[str, str], float]]]:
    """One patient's challenge scores: ``(dose score, DVH score, (pred DVH metrics, ref_metrics))``,
    the last for :func:`dvh_score_pooled`. ``ref_metrics``: :func:`openkbp_dvh_metrics` of the
    reference (computed once per patient by the caller when several predictions are scored)."""
    pred_metrics = openkbp_dvh_metrics(pred_gy, structures, voxel_volume_mm3)
    return (
        dose_score(pred_gy, ref_gy, possible_dose_mask),
        dvh_score(pred_metrics, ref_metrics),
        (pred_metrics, ref_metrics),
    )


def reference_dvh_metrics(patient: Any) -> dict[tuple[str, str], float]:
    """:func:`openkbp_dvh_metrics` of a patient's reference dose (``Patient.dose_gy``), its
    structures and voxel volume: the ``ref_metrics`` of :func:`score_patient`."""
    return openkbp_dvh_metrics(patient.dose_gy, patient.structures, patient.voxel_volume_mm3)


def score_patient(
    pred_gy: np.ndarray, patient: Any, ref_metrics: Mapping[tuple[str, str], float] | None = None
) -> tuple[float, float, tuple[dict[tuple[str, str], float], Mapping[tuple[str, str], float]]]:
    """:func:`score_prediction` of ``pred_gy`` against a patient with a reference dose (a
    ``Patient``: its dose, possible-dose mask, structures and voxel volume); ``ref_metrics`` from
    :func:`reference_dvh_metrics`, computed here when not given (give it when several predictions
    of one patient are scored)."""
    if ref_metrics is None:
        ref_metrics = reference_dvh_metrics(patient)
    return score_prediction(
        pred_gy,
        patient.dose_gy,
        np.asarray(patient.possible_dose_mask, bool),
        patient.structures,
        patient.voxel_volume_mm3,
        ref_metrics,
    )


def score_summary(
    scores: Sequence[tuple[float, float, tuple[Mapping, Mapping]]],
) -> tuple[float, float, float]:
    """Over patients' :func:`score_prediction` results: (mean dose score, mean of the per-patient
    DVH scores that are not NaN, the challenge's pooled DVH score)."""
    return (
        float(np.mean([s[0] for s in scores])),
        float(np.nanmean([s[1] for s in scores])),
        dvh_score_pooled(s[2] for s in scores),
    )


def bootstrap_mean_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (one per patient, NaN
    dropped): how far the mean over these patients could lie from the mean over other patients like
    them (``scipy.stats.bootstrap``, ``resamples`` resamples, a fixed ``seed`` so a report repeats).
    (mean, mean) for fewer than two values or values all equal; (nan, nan) for none."""
    x = np.asarray([v for v in values if math.isfinite(v)], float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean())
    from scipy.stats import bootstrap

    ci = bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class DvhErrorRow:
    """The errors of one (ROI, challenge metric) over patients: ``n`` pairs, mean ``|pred - ref|``
    (Gy), mean ``pred - ref`` (Gy; a bias), and the share of the pooled DVH score (0-1)."""

    roi: str
    metric: str
    n: int
    mae: float
    bias: float
    share: float


def dvh_error_breakdown(
    patients: Iterable[tuple[Mapping[tuple[str, str], float], Mapping[tuple[str, str], float]]],
) -> list[DvhErrorRow]:
    """Where the pooled DVH score comes from: one row per (roi, metric) pair present in any
    patient (the pairs :func:`dvh_errors` counts), sorted by ROI then metric. The shares sum to 1
    and ``sum(n * mae) / sum(n)`` is :func:`dvh_score_pooled`."""
    signed: dict[tuple[str, str], list[float]] = {}
    for pred, ref in patients:
        for key in dvh_errors(pred, ref):
            signed.setdefault(key, []).append(pred[key] - ref[key])
    total = sum(sum(abs(e) for e in errors) for errors in signed.values())
    rows = []
    for (roi, metric), errors in sorted(signed.items()):
        absolute = sum(abs(e) for e in errors)
        rows.append(
            DvhErrorRow(
                roi,
                metric,
                len(errors),
                absolute / len(errors),
                sum(errors) / len(errors),
                absolute / total if total > 0 else math.nan,
            )
        )
    return rows


# --------------------------------------------------------------------------- extended ROI metrics


def roi_metrics(
    dose_gy: np.ndarray,
    mask: np.ndarray,
    voxel_volume_mm3: float,
    prescription_gy: float | None = None,
) -> dict[str, float]:
    """Extended DVH metrics of one ROI (keys :data:`ROI_METRIC_NAMES`; doses in Gy).

    volume_cc; Dmean; D_0.1cc (challenge definition); Dx for x in 1, 2, 50, 95, 98, 99 (dose to at
    least x % of the volume); HI = (D2 - D98) / D50 (homogeneity index; NaN when D50 = 0);
    V95 = % of the ROI receiving >= 95 % of ``prescription_gy`` (NaN without a prescription).
    An empty mask gives volume_cc = 0 and NaN for every other value.
    """
    _check_same_shape(dose_gy, mask)
    roi_dose = np.asarray(dose_gy)[np.asarray(mask, bool)].astype(np.float64)
    out = dict.fromkeys(ROI_METRIC_NAMES, math.nan)
    out["volume_cc"] = roi_dose.size * voxel_volume_mm3 * _CC_PER_MM3
    if roi_dose.size == 0:
        return out
    out["Dmean"] = float(roi_dose.mean())
    out["D_0.1cc"] = d_tenth_cc(roi_dose, voxel_volume_mm3)
    for x in (1, 2, 50, 95, 98, 99):
        out[f"D{x}"] = dose_at_volume_percent(roi_dose, x)
    if out["D50"] > 0:
        out["HI"] = (out["D2"] - out["D98"]) / out["D50"]
    if prescription_gy is not None:
        out["V95"] = float(np.count_nonzero(roi_dose >= 0.95 * prescription_gy) / roi_dose.size * 100.0)
    return out


def dvh_curve(
    dose_gy: np.ndarray,
    mask: np.ndarray,
    bin_width_gy: float = 0.1,
    max_dose_gy: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative DVH of one ROI.

    Returns ``(dose_axis_gy, volume_percent)``, both 1-D float64 of equal length: dose_axis runs
    0, w, 2w, ... up to ``max_dose_gy`` (default: the ROI's maximum dose, rounded up to a bin);
    ``volume_percent[i]`` is the % of the ROI receiving ``>= dose_axis[i]``. Empty mask: NaN volumes.
    """
    if not bin_width_gy > 0:
        raise ValueError(f"bin width must be positive, got {bin_width_gy} Gy")
    _check_same_shape(dose_gy, mask)
    roi_dose = np.sort(np.asarray(dose_gy)[np.asarray(mask, bool)].astype(np.float64))
    if max_dose_gy is None:
        max_dose_gy = float(roi_dose[-1]) if roi_dose.size else 0.0
    n_bins = int(np.ceil(max_dose_gy / bin_width_gy - 1e-9)) + 1
    dose_axis = np.arange(max(n_bins, 1)) * bin_width_gy
    if roi_dose.size == 0:
        return dose_axis, np.full(dose_axis.shape, math.nan)
    at_least = roi_dose.size - np.searchsorted(roi_dose, dose_axis, side="left")
    return dose_axis, at_least / roi_dose.size * 100.0


# --------------------------------------------------------------------------- isodose agreement


def isodose_dice(
    pred_gy: np.ndarray, ref_gy: np.ndarray, level_gy: float, mask: np.ndarray | None = None
) -> float:
    """Dice of the predicted and reference isodose volumes ``dose >= level_gy``.

    mask: optional bool (I, J, K) restricting both volumes (e.g. the possible-dose mask).
    ``2 |P & R| / (|P| + |R|)``; NaN when both volumes are empty (left out of averages).
    """
    _check_same_shape(pred_gy, ref_gy)
    p = np.asarray(pred_gy) >= level_gy
    r = np.asarray(ref_gy) >= level_gy
    if mask is not None:
        _check_same_shape(pred_gy, mask)
        m = np.asarray(mask, bool)
        p &= m
        r &= m
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(p & r)) / total


def highest_prescription_gy(structures: Mapping[str, np.ndarray]) -> float:
    """The highest prescription (Gy) among the patient's non-empty targets; else the benchmark's."""
    doses = [PRESCRIPTION_GY[n] for n, m in structures.items() if n in PRESCRIPTION_GY and np.any(m)]
    return max(doses) if doses else MAX_PRESCRIPTION_GY


def isodose_dice_levels(
    pred_gy: np.ndarray,
    ref_gy: np.ndarray,
    prescription_gy: float,
    fractions: Sequence[float] = ISODOSE_FRACTIONS,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`isodose_dice` at ``fraction * prescription_gy`` for each fraction.

    Returns ``{"dice_50": ..., "dice_80": ..., "dice_95": ..., "dice_100": ...}`` (key = percent).
    """
    return {
        f"dice_{round(f * 100):d}": isodose_dice(pred_gy, ref_gy, f * prescription_gy, mask)
        for f in fractions
    }


# --------------------------------------------------------------------------- one patient, every metric


@dataclass
class PatientEvaluation:
    """Every metric of one predicted dose against its reference (doses in Gy).

    dose_score: OpenKBP 3D dose score. dvh_score: this patient's DVH score (mean over its pairs).
    slice_dose_score: the paper's slice-averaged variant (possible-dose mask slices).
    isodose_dice: ``dice_<percent>`` at those percents of ``prescription_gy`` (the patient's highest).
    pred_dvh, ref_dvh: :func:`openkbp_dvh_metrics` of each dose (for :func:`dvh_score_pooled`).
    rois: ROI name -> {"pred": roi_metrics, "ref": roi_metrics} for every non-empty contoured ROI.
    """

    patient_id: str
    dose_score: float
    dvh_score: float
    slice_dose_score: float
    prescription_gy: float
    isodose_dice: dict[str, float]
    pred_dvh: dict[tuple[str, str], float]
    ref_dvh: dict[tuple[str, str], float]
    rois: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def evaluate_patient(
    pred_gy: np.ndarray,
    ref_gy: np.ndarray,
    possible_dose_mask: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_volume_mm3: float,
    patient_id: str = "",
) -> PatientEvaluation:
    """Score ``pred_gy`` against ``ref_gy`` (both (I, J, K) Gy) with every metric of this module.

    possible_dose_mask: bool (I, J, K); structures: ROI name -> bool (I, J, K) (the reference
    contours, used for both doses); voxel_volume_mm3: mm^3.
    """
    pred_dvh = openkbp_dvh_metrics(pred_gy, structures, voxel_volume_mm3)
    ref_dvh = openkbp_dvh_metrics(ref_gy, structures, voxel_volume_mm3)
    rx = highest_prescription_gy(structures)
    rois: dict[str, dict[str, dict[str, float]]] = {}
    for name in sorted(structures):
        mask = structures[name]
        if not np.any(mask):
            continue
        rx_roi = PRESCRIPTION_GY.get(name)
        rois[name] = {
            "ref": roi_metrics(ref_gy, mask, voxel_volume_mm3, rx_roi),
            "pred": roi_metrics(pred_gy, mask, voxel_volume_mm3, rx_roi),
        }
    return PatientEvaluation(
        patient_id=patient_id,
        dose_score=dose_score(pred_gy, ref_gy, possible_dose_mask),
        dvh_score=dvh_score(pred_dvh, ref_dvh),
        slice_dose_score=slice_dose_score(pred_gy, ref_gy, possible_dose_mask),
        prescription_gy=rx,
        isodose_dice=isodose_dice_levels(pred_gy, ref_gy, rx, mask=possible_dose_mask),
        pred_dvh=pred_dvh,
        ref_dvh=ref_dvh,
        rois=rois,
    )
