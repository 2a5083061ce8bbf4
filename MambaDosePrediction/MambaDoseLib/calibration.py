"""Widening a predicted dose's too narrow hot end inside each target (an opt-in post-processing).

A network trained on a voxel-wise L1 loss predicts, in every voxel, the median of what it has seen:
where a plan's hot spots fall inside a PTV is hard to foresee, so the predicted target dose is more
homogeneous than a plan's. On the 33 OpenKBP validation patients the shipped ensemble's hottest 1 %
of every PTV (D_1) is 1.4-1.7 Gy too cold and its mean PTV homogeneity index 0.131 against the
plans' 0.158 (docs/experiments.md, "Session 12").

:func:`widen_ptv_hot_tail` stretches the upper half of the dose distribution inside each target
so that its spread is at least the training plans' mean spread. Targets are taken from the highest
prescription down, each as its voxels inside the possible-dose mask that a higher one does not
hold (its own region). In a region of at least ``MIN_VOXELS`` voxels with predicted percentiles
``q50``, ``q90``, ``q99``, the gaps become::

    g1 = max(q90 - q50, SPREAD[roi][0])        g2 = max(q99 - q90, SPREAD[roi][1])

and the dose is mapped piecewise linearly: unchanged up to ``q50``; ``[q50, q90]`` onto
``[q50, q50 + g1]``; ``[q90, q99]`` onto ``[q50 + g1, q50 + g1 + g2]``; above ``q99`` with the
slope of the last segment (at most ``MAX_SLOPE``). The map is monotone, so the order of voxels by
dose is kept; only voxels above the region's median move, and only upwards. Nothing outside the
targets changes. ``SPREAD`` holds the mean gaps of the reference doses of the 169 OpenKBP training
patients (:func:`reference_spreads`, reproduced by ``benchmarks/ptv_spread_calibration.py table``);
no validation patient entered it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .rois import PRESCRIPTION_GY, TARGET_NAMES

#: roi -> (mean q90 - q50, mean q99 - q90) in Gy of the reference dose inside the target's own
#: region, over the 169 OpenKBP training patients that have the target.
SPREAD_GY: dict[str, tuple[float, float]] = {
    "PTV70": (1.55, 1.00),
    "PTV63": (3.30, 1.83),
    "PTV56": (5.64, 4.07),
}
#: Regions smaller than this (voxels) are left as they are.
MIN_VOXELS: int = 20
#: Largest slope of the map above the 99th percentile.
MAX_SLOPE: float = 4.0
#: Smallest gap (Gy) treated as a span, so a flat region maps without dividing by zero.
_MIN_GAP_GY: float = 1e-3


def target_regions(
    structures: Mapping[str, np.ndarray], possible_dose_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Each target's own region: its voxels inside the mask that no higher prescription's target
    holds, highest prescription first; regions under ``MIN_VOXELS`` voxels are left out."""
    mask = np.asarray(possible_dose_mask, bool)
    taken = np.zeros(mask.shape, bool)
    out: dict[str, np.ndarray] = {}
    for roi in sorted(TARGET_NAMES, key=lambda name: -PRESCRIPTION_GY[name]):
        if roi not in structures:
            continue
        region = np.asarray(structures[roi], bool) & mask & ~taken
        taken |= region
        if region.sum() >= MIN_VOXELS:
            out[roi] = region
    return out


def _widen(values: np.ndarray, spread: tuple[float, float]) -> np.ndarray:
    q50, q90, q99 = np.percentile(values, (50, 90, 99))
    old = (max(q90 - q50, _MIN_GAP_GY), max(q99 - q90, _MIN_GAP_GY))
    new = (max(old[0], spread[0]), max(old[1], spread[1]))
    xp = np.array([q50, q50 + old[0], q50 + old[0] + old[1]])
    fp = np.array([q50, q50 + new[0], q50 + new[0] + new[1]])
    out = np.interp(values, xp, fp)
    slope = min(new[1] / old[1], MAX_SLOPE)
    above = values > xp[2]
    out[above] = fp[2] + (values[above] - xp[2]) * slope
    return np.where(values <= q50, values, out)


def widen_ptv_hot_tail(
    dose_gy: np.ndarray,
    structures: Mapping[str, np.ndarray],
    possible_dose_mask: np.ndarray,
    spread_gy: Mapping[str, tuple[float, float]] = SPREAD_GY,
) -> np.ndarray:
    """The dose with each target's hot end widened to at least ``spread_gy`` (module doc).

    dose_gy: (I, J, K) Gy; structures: ROI name -> bool mask on the same grid (only the names in
    ``spread_gy`` are changed); possible_dose_mask: bool (I, J, K). Returns a new float32 array.
    """
    dose = np.asarray(dose_gy)
    if dose.shape != np.shape(possible_dose_mask):
        raise ValueError(
            f"dose {dose.shape} and possible-dose mask {np.shape(possible_dose_mask)} differ in shape"
        )
    out = dose.astype(np.float32, copy=True)
    for roi, region in target_regions(structures, possible_dose_mask).items():
        if roi in spread_gy:
            out[region] = _widen(dose[region].astype(np.float64), spread_gy[roi]).astype(np.float32)
    return out


def reference_spreads(patients: Iterable[object]) -> dict[str, tuple[float, float]]:
    """Mean (q90 - q50, q99 - q90) of the reference dose in each target's own region over
    ``patients`` (``Patient`` objects with a dose), as in :data:`SPREAD_GY`; targets no patient has
    are left out."""
    gaps: dict[str, list[tuple[float, float]]] = {}
    for patient in patients:
        dose = np.asarray(patient.dose_gy)
        for roi, region in target_regions(patient.structures, patient.possible_dose_mask).items():
            q50, q90, q99 = np.percentile(dose[region].astype(np.float64), (50, 90, 99))
            gaps.setdefault(roi, []).append((q90 - q50, q99 - q90))
    return {roi: tuple(float(x) for x in np.mean(values, axis=0)) for roi, values in gaps.items()}
