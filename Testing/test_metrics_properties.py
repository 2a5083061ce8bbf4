"""Hypothesis properties of the DVH and dose metrics (MambaDoseLib.metrics)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from MambaDoseLib import metrics

DX_ORDER = ("D99", "D98", "D95", "D50", "D2", "D1")

doses = hnp.arrays(
    np.float64,
    st.integers(1, 60),
    elements=st.floats(0.0, 80.0, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)
voxel_volumes = st.floats(1.0, 200.0)


def _volume(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (n, 1, 1) dose volume and an all-true mask."""
    dose = values.reshape(-1, 1, 1)
    return dose, np.ones(dose.shape, bool)


@settings(max_examples=80, deadline=None)
@given(doses, voxel_volumes)
def test_dx_monotonic_and_hi_nonnegative(values, voxel_volume):
    dose, mask = _volume(values)
    m = metrics.roi_metrics(dose, mask, voxel_volume, prescription_gy=70.0)
    chain = [m[k] for k in DX_ORDER]
    assert all(a <= b + 1e-9 for a, b in zip(chain[:-1], chain[1:], strict=True))
    assert values.min() - 1e-9 <= m["D99"] and m["D1"] <= values.max() + 1e-9
    assert values.min() - 1e-9 <= m["Dmean"] <= values.max() + 1e-9
    assert values.min() - 1e-9 <= m["D_0.1cc"] <= values.max() + 1e-9
    assert math.isnan(m["HI"]) or m["HI"] >= 0
    assert 0.0 <= m["V95"] <= 100.0


@settings(max_examples=60, deadline=None)
@given(doses, voxel_volumes, st.floats(-20.0, 20.0))
def test_shift_moves_every_dose_metric_by_the_shift(values, voxel_volume, c):
    dose, mask = _volume(values)
    a = metrics.openkbp_dvh_metrics(dose, {"PTV70": mask, "Brainstem": mask}, voxel_volume)
    b = metrics.openkbp_dvh_metrics(dose + c, {"PTV70": mask, "Brainstem": mask}, voxel_volume)
    assert set(a) == set(b)
    for key in a:
        assert math.isclose(b[key], a[key] + c, abs_tol=1e-7), key


@settings(max_examples=60, deadline=None)
@given(doses, voxel_volumes, st.floats(0.1, 5.0))
def test_scaling_scales_every_dose_metric(values, voxel_volume, s):
    dose, mask = _volume(values)
    a = metrics.roi_metrics(dose, mask, voxel_volume)
    b = metrics.roi_metrics(dose * s, mask, voxel_volume)
    for key in ("Dmean", "D_0.1cc", *DX_ORDER):
        assert math.isclose(b[key], a[key] * s, rel_tol=1e-9, abs_tol=1e-7), key
    if not math.isnan(a["HI"]):
        assert math.isclose(b["HI"], a["HI"], rel_tol=1e-7, abs_tol=1e-7)  # HI is scale-free


@settings(max_examples=60, deadline=None)
@given(doses, voxel_volumes, st.randoms(use_true_random=False))
def test_permutation_invariance(values, voxel_volume, rng):
    order = list(range(values.size))
    rng.shuffle(order)
    dose, mask = _volume(values)
    dose_p, _ = _volume(values[order])
    a = metrics.openkbp_dvh_metrics(dose, {"PTV63": mask, "Larynx": mask}, voxel_volume)
    b = metrics.openkbp_dvh_metrics(dose_p, {"PTV63": mask, "Larynx": mask}, voxel_volume)
    for key in a:
        assert math.isclose(a[key], b[key], abs_tol=1e-9), key


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, (4, 3, 5), elements=st.floats(0.0, 80.0)),
    hnp.arrays(np.float64, (4, 3, 5), elements=st.floats(0.0, 80.0)),
    hnp.arrays(np.bool_, (4, 3, 5)),
)
def test_dose_scores_zero_iff_equal_and_symmetric(pred, ref, mask):
    if not mask.any():
        assert math.isnan(metrics.dose_score(pred, ref, mask))
        assert math.isnan(metrics.slice_dose_score(pred, ref, mask))
        return
    assert metrics.dose_score(ref, ref, mask) == 0.0
    assert metrics.slice_dose_score(ref, ref, mask) == 0.0
    score = metrics.dose_score(pred, ref, mask)
    assert score >= 0.0
    assert math.isclose(score, metrics.dose_score(ref, pred, mask), abs_tol=1e-12)
    assert (score == 0.0) == bool(np.array_equal(pred, ref))
    structures = {"PTV70": mask, "SpinalCord": mask}
    ref_m = metrics.openkbp_dvh_metrics(ref, structures, 38.0)
    assert metrics.dvh_score(ref_m, ref_m) == 0.0


@settings(max_examples=60, deadline=None)
@given(doses, st.floats(0.05, 5.0))
def test_dvh_curve_is_non_increasing_from_100(values, width):
    dose, mask = _volume(values)
    axis, volume = metrics.dvh_curve(dose, mask, bin_width_gy=width)
    assert axis[0] == 0.0 and volume[0] == 100.0
    assert np.all(np.diff(volume) <= 1e-12)
    assert axis[-1] >= values.max() - 1e-9
    # each point is the share of voxels at or above the dose
    i = len(axis) // 2
    assert math.isclose(volume[i], np.mean(values >= axis[i]) * 100.0)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, (3, 4, 5), elements=st.floats(0.0, 80.0)),
    hnp.arrays(np.float64, (3, 4, 5), elements=st.floats(0.0, 80.0)),
    st.floats(1.0, 79.0),
)
def test_isodose_dice_bounds_and_symmetry(pred, ref, level):
    d = metrics.isodose_dice(pred, ref, level)
    if math.isnan(d):
        assert not (pred >= level).any() and not (ref >= level).any()
        return
    assert 0.0 <= d <= 1.0
    assert math.isclose(d, metrics.isodose_dice(ref, pred, level))
    if (ref >= level).any():
        assert metrics.isodose_dice(ref, ref, level) == 1.0


_dvh_metrics = st.dictionaries(  # one patient's {(roi, metric): Gy}, NaN for a missing value
    st.tuples(st.sampled_from(["PTV70", "Brainstem", "Larynx"]), st.sampled_from(["D_1", "mean"])),
    st.one_of(st.floats(0.0, 80.0), st.just(math.nan)),
    max_size=6,
)
_pairs = st.lists(st.tuples(_dvh_metrics, _dvh_metrics), max_size=5)  # (pred, ref) per patient


@given(_pairs)
def test_dvh_breakdown_adds_up_to_the_pooled_score(patients):
    rows = metrics.dvh_error_breakdown(patients)
    pooled = metrics.dvh_score_pooled(patients)
    n = sum(r.n for r in rows)
    if n == 0:
        assert rows == [] and math.isnan(pooled)
        return
    assert math.isclose(sum(r.n * r.mae for r in rows) / n, pooled, rel_tol=1e-9, abs_tol=1e-12)
    assert all(abs(r.bias) <= r.mae + 1e-9 for r in rows)
    if pooled > 0:
        assert math.isclose(sum(r.share for r in rows), 1.0, rel_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 20.0, allow_nan=False), min_size=2, max_size=40), st.integers(0, 3))
def test_bootstrap_interval_holds_the_mean_and_repeats(values, seed):
    low, high = metrics.bootstrap_mean_ci(values, resamples=2000, seed=seed)
    mean = float(np.mean(values))
    assert low <= mean + 1e-9 and mean - 1e-9 <= high
    assert min(values) - 1e-9 <= low <= high <= max(values) + 1e-9
    assert metrics.bootstrap_mean_ci(values, resamples=2000, seed=seed) == (low, high)  # a report repeats
