"""Hand-computed test vectors for every metric in MambaDoseLib.metrics (definitions to 1e-6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from MambaDoseLib import metrics
from MambaDoseLib.patient import Patient

TOL = 1e-6


def _line(values, shape=None) -> np.ndarray:
    """A volume holding ``values`` along its first axis (shape (n, 1, 1))."""
    a = np.asarray(values, np.float64).reshape(-1, 1, 1)
    return a if shape is None else a.reshape(shape)


def test_dose_score_sums_over_all_voxels_and_divides_by_mask_size():
    ref = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[0, 0, 0] = 3.0  # inside the mask
    pred[1, 1, 1] = -1.0  # outside the mask: still counts
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, :] = True  # 2 voxels
    # (|3| + |-1|) / 2 = 2.0
    assert metrics.dose_score(pred, ref, mask) == pytest.approx(2.0, abs=TOL)


def test_dose_score_empty_mask_is_nan_and_shape_mismatch_raises():
    z = np.zeros((2, 2, 2))
    assert math.isnan(metrics.dose_score(z, z, np.zeros((2, 2, 2), bool)))
    with pytest.raises(ValueError):
        metrics.dose_score(z, np.zeros((2, 2, 3)), np.ones((2, 2, 2), bool))


def test_slice_dose_score_averages_slices_first():
    ref = np.zeros((1, 2, 3))
    pred = np.zeros((1, 2, 3))
    mask = np.zeros((1, 2, 3), bool)
    mask[0, 0, 0] = True  # slice 0: 1 mask voxel
    pred[0, :, 0] = 2.0  # slice 0 error sum = 4
    mask[0, :, 1] = True  # slice 1: 2 mask voxels
    pred[0, 0, 1] = 2.0  # slice 1 error sum = 2
    pred[0, 0, 2] = 9.0  # slice 2 has no mask voxel: left out of the slice average
    # slices: 4 / 1 = 4 and 2 / 2 = 1 -> mean 2.5
    assert metrics.slice_dose_score(pred, ref, mask) == pytest.approx(2.5, abs=TOL)
    # 3D score for comparison: (4 + 2 + 9) / 3 = 5
    assert metrics.dose_score(pred, ref, mask) == pytest.approx(5.0, abs=TOL)


@pytest.mark.parametrize(
    "voxel_volume_mm3, n_voxels",
    [(38.14, 3), (50.0, 2), (300.0, 1), (100.0, 1), (10.0, 10), (40.0, 2)],  # 100/40 = 2.5 -> round 2
)
def test_tenth_cc_voxels(voxel_volume_mm3, n_voxels):
    assert metrics.tenth_cc_voxels(voxel_volume_mm3) == n_voxels


def test_d_tenth_cc_matches_challenge_percentile():
    doses = np.arange(10.0)  # 0..9
    # n = 2 voxels for 50 mm^3: percentile(100 - 2/10*100 = 80) -> 0.8 * 9 = 7.2
    assert metrics.d_tenth_cc(doses, 50.0) == pytest.approx(7.2, abs=TOL)
    # n = 1 for 300 mm^3: percentile(90) -> 8.1
    assert metrics.d_tenth_cc(doses, 300.0) == pytest.approx(8.1, abs=TOL)
    # ROI smaller than 0.1 cc (n = 10 > 3 voxels): percentile clamped at 0 -> the minimum
    assert metrics.d_tenth_cc(np.array([4.0, 5.0, 6.0]), 10.0) == pytest.approx(4.0, abs=TOL)
    assert math.isnan(metrics.d_tenth_cc(np.array([]), 10.0))


def test_openkbp_dvh_metrics_oar_and_target():
    dose = _line(np.arange(11.0))  # 0..10 along axis 0
    all_voxels = np.ones(dose.shape, bool)
    first_ten = all_voxels.copy()
    first_ten[10] = False  # doses 0..9
    structures = {"PTV70": all_voxels, "Brainstem": first_ten, "Larynx": np.zeros(dose.shape, bool)}
    got = metrics.openkbp_dvh_metrics(dose, structures, voxel_volume_mm3=50.0)
    expected = {
        # target 0..10, 11 voxels: percentile q -> q/100 * 10
        ("PTV70", "D_99"): 0.1,
        ("PTV70", "D_95"): 0.5,
        ("PTV70", "D_1"): 9.9,
        # OAR 0..9: D_0.1cc = 7.2 (see above), mean 4.5
        ("Brainstem", "D_0.1_cc"): 7.2,
        ("Brainstem", "mean"): 4.5,
    }  # the empty Larynx is left out
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


def test_dvh_score_shared_pairs_only_and_pooled_variant():
    ref_a = {("PTV70", "D_95"): 66.0, ("Brainstem", "mean"): 20.0, ("Larynx", "mean"): 30.0}
    pred_a = {("PTV70", "D_95"): 68.0, ("Brainstem", "mean"): 19.0, ("Mandible", "mean"): 5.0}
    # shared: |68-66| = 2, |19-20| = 1 -> 1.5
    assert metrics.dvh_score(pred_a, ref_a) == pytest.approx(1.5, abs=TOL)
    ref_b = {("PTV56", "D_1"): 60.0}
    pred_b = {("PTV56", "D_1"): 66.0}  # error 6
    # pooled: (2 + 1 + 6) / 3 = 3; mean of per-patient scores: (1.5 + 6) / 2 = 3.75
    assert metrics.dvh_score_pooled([(pred_a, ref_a), (pred_b, ref_b)]) == pytest.approx(3.0, abs=TOL)
    assert math.isnan(metrics.dvh_score({}, ref_b))
    # the same through score_prediction / score_summary (dose: one voxel of error 2 and one of 0)
    mask = np.array([[[True, True, False]]])
    ref_gy, pred_gy = np.array([[[10.0, 20.0, 0.0]]]), np.array([[[12.0, 20.0, 0.0]]])
    structures = {"PTV70": np.array([[[True, True, False]]])}
    ref_m = metrics.openkbp_dvh_metrics(ref_gy, structures, 1.0)
    one = metrics.score_prediction(pred_gy, ref_gy, mask, structures, 1.0, ref_m)
    assert one[0] == pytest.approx(1.0, abs=TOL) and one[2][1] is ref_m
    assert one[1] == pytest.approx(metrics.dvh_score(one[2][0], ref_m), abs=TOL)
    # the same through score_patient, from a Patient (its reference computed, or the one given)
    patient = Patient("pt_x", np.zeros(ref_gy.shape, np.float32), (1.0, 1.0, 1.0), mask, structures, ref_gy)
    assert metrics.reference_dvh_metrics(patient) == ref_m
    for given in (None, ref_m):
        got = metrics.score_patient(pred_gy, patient, given)
        assert got[:2] == pytest.approx(one[:2], abs=TOL) and got[2][1] == ref_m
    rows = [(2.0, 1.5, (pred_a, ref_a)), (4.0, math.nan, ({}, ref_b)), (3.0, 6.0, (pred_b, ref_b))]
    assert metrics.score_summary(rows) == pytest.approx((3.0, 3.75, 3.0), abs=TOL)
    assert math.isnan(metrics.dvh_score({("PTV56", "D_1"): math.nan}, ref_b))
    # the breakdown of the same pairs: one row per shared (roi, metric), sorted
    ref_c = {("Brainstem", "mean"): 20.0}
    pred_c = {("Brainstem", "mean"): 23.0}  # +3
    rows = metrics.dvh_error_breakdown([(pred_a, ref_a), (pred_b, ref_b), (pred_c, ref_c)])
    got = [(r.roi, r.metric, r.n, r.mae, r.bias, r.share) for r in rows]
    total = 2 + 1 + 6 + 3
    expected = [
        ("Brainstem", "mean", 2, 2.0, 1.0, 4 / total),  # errors -1, +3
        ("PTV56", "D_1", 1, 6.0, 6.0, 6 / total),
        ("PTV70", "D_95", 1, 2.0, 2.0, 2 / total),
    ]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[3:] == pytest.approx(e[3:], abs=TOL)


def test_roi_metrics_hand_vector():
    dose = _line(np.arange(11.0))  # 0..10, 11 voxels
    mask = np.ones(dose.shape, bool)
    got = metrics.roi_metrics(dose, mask, voxel_volume_mm3=50.0, prescription_gy=10.0)
    expected = {
        "volume_cc": 11 * 50.0 / 1000.0,  # 0.55 cc
        "Dmean": 5.0,
        "D_0.1cc": (1 - 2 / 11) * 10,  # n = 2: percentile(100 - 2/11*100) -> 8.1818..
        "D1": 9.9,  # percentile 99
        "D2": 9.8,
        "D50": 5.0,
        "D95": 0.5,
        "D98": 0.2,
        "D99": 0.1,
        "HI": (9.8 - 0.2) / 5.0,  # 1.92
        "V95": 1 / 11 * 100.0,  # only the 10 Gy voxel reaches 9.5 Gy
    }
    assert tuple(got) == metrics.ROI_METRIC_NAMES
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


def test_roi_metrics_oar_has_nan_v95_and_empty_mask_gives_nan():
    dose = _line([1.0, 2.0, 3.0])
    got = metrics.roi_metrics(dose, np.ones(dose.shape, bool), 1000.0)
    assert math.isnan(got["V95"])
    empty = metrics.roi_metrics(dose, np.zeros(dose.shape, bool), 1000.0, prescription_gy=70.0)
    assert empty["volume_cc"] == 0.0
    assert all(math.isnan(v) for k, v in empty.items() if k != "volume_cc")


def test_roi_metrics_d_tenth_cc_three_voxels():
    dose = _line([1.0, 2.0, 3.0])
    # n = max(1, round(100/1000)) = 1 -> percentile(100 - 1/3*100 = 66.67) -> 1 + 0.6667*2 = 2.3333
    got = metrics.roi_metrics(dose, np.ones(dose.shape, bool), 1000.0)
    assert got["D_0.1cc"] == pytest.approx(1.0 + 2.0 * (2.0 / 3.0), abs=TOL)


def test_roi_metrics_zero_dose_has_nan_hi():
    dose = np.zeros((3, 1, 1))
    got = metrics.roi_metrics(dose, np.ones(dose.shape, bool), 10.0)
    assert got["D50"] == 0.0 and math.isnan(got["HI"])


def test_dvh_curve_hand_vector():
    dose = _line([0.0, 1.0, 1.0, 2.0])
    axis, volume = metrics.dvh_curve(dose, np.ones(dose.shape, bool), bin_width_gy=1.0)
    np.testing.assert_allclose(axis, [0.0, 1.0, 2.0], atol=TOL)
    np.testing.assert_allclose(volume, [100.0, 75.0, 25.0], atol=TOL)
    axis, volume = metrics.dvh_curve(dose, np.ones(dose.shape, bool), bin_width_gy=0.5, max_dose_gy=3.0)
    np.testing.assert_allclose(axis, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], atol=TOL)
    np.testing.assert_allclose(volume, [100.0, 75.0, 75.0, 25.0, 25.0, 0.0, 0.0], atol=TOL)
    axis, volume = metrics.dvh_curve(dose, np.zeros(dose.shape, bool), bin_width_gy=1.0, max_dose_gy=2.0)
    assert axis.shape == (3,) and np.all(np.isnan(volume))


def test_isodose_dice_hand_vector():
    pred = _line([0.0, 5.0, 10.0, 10.0])
    ref = _line([0.0, 10.0, 10.0, 5.0])
    # level 8: P = {2, 3}, R = {1, 2}: 2 * 1 / (2 + 2) = 0.5
    assert metrics.isodose_dice(pred, ref, 8.0) == pytest.approx(0.5, abs=TOL)
    # level 5 (>=): P = {1,2,3}, R = {1,2,3} -> 1
    assert metrics.isodose_dice(pred, ref, 5.0) == pytest.approx(1.0, abs=TOL)
    # mask keeps voxels 2, 3 only: P = {2,3}, R = {2} -> 2*1/3
    mask = _line([0, 0, 1, 1]).astype(bool)
    assert metrics.isodose_dice(pred, ref, 8.0, mask) == pytest.approx(2 / 3, abs=TOL)
    # both empty -> NaN
    assert math.isnan(metrics.isodose_dice(pred, ref, 50.0))


def test_isodose_dice_levels_and_highest_prescription():
    ref = _line([0.0, 30.0, 50.0, 60.0, 70.0])
    pred = _line([0.0, 30.0, 60.0, 60.0, 60.0])
    structures = {"PTV56": np.ones(ref.shape, bool), "PTV63": np.zeros(ref.shape, bool)}
    rx = metrics.highest_prescription_gy(structures)
    assert rx == 56.0  # PTV63 is empty
    assert metrics.highest_prescription_gy({}) == 70.0
    got = metrics.isodose_dice_levels(pred, ref, rx)
    # levels 28, 44.8, 53.2, 56 Gy
    # 28: P = {1,2,3,4}, R = {1,2,3,4} -> 1
    # 44.8: P = {2,3,4}, R = {2,3,4} -> 1
    # 53.2: P = {2,3,4}, R = {3,4} -> 2*2/5 = 0.8
    # 56: same sets -> 0.8
    assert list(got) == ["dice_50", "dice_80", "dice_95", "dice_100"]
    np.testing.assert_allclose(list(got.values()), [1.0, 1.0, 0.8, 0.8], atol=TOL)


def test_evaluate_patient_combines_every_metric():
    ref = np.zeros((4, 4, 2))
    ref[1:3, 1:3, :] = 70.0
    mask = ref > 0
    pred = np.where(mask, 68.0, 0.0)
    ev = metrics.evaluate_patient(
        pred, ref, mask, {"PTV70": mask, "Larynx": np.zeros_like(mask)}, 10.0, "pt_7"
    )
    assert ev.patient_id == "pt_7" and ev.prescription_gy == 70.0
    assert ev.dose_score == pytest.approx(2.0, abs=TOL)  # every mask voxel off by 2 Gy
    assert ev.slice_dose_score == pytest.approx(2.0, abs=TOL)
    assert ev.dvh_score == pytest.approx(2.0, abs=TOL)  # D_99, D_95, D_1 all 70 vs 68
    # 68 Gy reaches 50, 80, 95 % of 70 Gy (35, 56, 66.5) but not 100 %
    assert ev.isodose_dice["dice_50"] == 1.0 and ev.isodose_dice["dice_95"] == 1.0
    assert ev.isodose_dice["dice_100"] == 0.0
    assert set(ev.rois) == {"PTV70"}  # the empty Larynx is left out
    assert ev.rois["PTV70"]["ref"]["V95"] == 100.0 and ev.rois["PTV70"]["pred"]["V95"] == 100.0


def test_bootstrap_mean_ci_width_degenerate_cases_and_nan():
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 0.8, size=400)
    low, high = metrics.bootstrap_mean_ci(x)
    # for a mean of n normal values the 95 % interval is about +-1.96 sd / sqrt(n)
    half = 1.96 * x.std() / np.sqrt(x.size)
    assert abs((high - low) / 2 - half) < 0.1 * half and abs((high + low) / 2 - x.mean()) < 0.1 * half
    # more patients like these: a narrower interval
    wide = metrics.bootstrap_mean_ci(x[:25])
    assert wide[1] - wide[0] > 2.5 * (high - low)
    assert metrics.bootstrap_mean_ci([2.5]) == (2.5, 2.5)
    assert metrics.bootstrap_mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert metrics.bootstrap_mean_ci([1.0, math.nan, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in metrics.bootstrap_mean_ci([math.nan]))
