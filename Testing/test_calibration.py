"""calibration.widen_ptv_hot_tail: the map pinned by hand, its properties, its table from the real
training plans, and the --widen-ptv-hot-end option of both prediction commands."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, load_script
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from MambaDoseLib import calibration, openkbp


def _region_case(values: np.ndarray, roi: str = "PTV70"):
    """A (1, 1, N) grid whose every voxel is in ``roi`` and the possible-dose mask."""
    dose = np.asarray(values, np.float32).reshape(1, 1, -1)
    mask = np.ones(dose.shape, bool)
    return dose, {roi: mask.copy()}, mask


def test_map_by_hand():
    # 101 doses 60..70 Gy in 0.1 Gy steps: q50 65, q90 69, q99 69.9 (gaps 4 and 0.9)
    values = np.linspace(60.0, 70.0, 101)
    dose, structures, mask = _region_case(values)
    out = calibration.widen_ptv_hot_tail(dose, structures, mask, {"PTV70": (2.0, 1.8)}).ravel()
    # below the median: unchanged; first gap 4 >= 2 stays, second 0.9 -> 1.8 (slope 2)
    np.testing.assert_allclose(out[values <= 65.0], values[values <= 65.0], atol=1e-5)
    np.testing.assert_allclose(out[values == 67.0], 67.0, atol=1e-5)
    np.testing.assert_allclose(out[np.isclose(values, 69.5)], 69.0 + 0.5 * 2.0, atol=1e-4)
    np.testing.assert_allclose(out[-1], 69.0 + 1.8 + 0.1 * 2.0, atol=1e-4)  # above q99: slope 2
    # a spread already wider than the table's is left as it is
    same = calibration.widen_ptv_hot_tail(dose, structures, mask, {"PTV70": (1.0, 0.5)})
    np.testing.assert_allclose(same, dose, atol=1e-5)


def test_flat_region_and_slope_cap():
    dose, structures, mask = _region_case(np.full(50, 66.0))
    out = calibration.widen_ptv_hot_tail(dose, structures, mask)
    np.testing.assert_allclose(out, dose)  # all at the median: nothing above it moves
    values = np.r_[np.full(99, 66.0), 67.0]  # q99 at 66.01: the last voxel's slope is capped
    dose, structures, mask = _region_case(values)
    out = calibration.widen_ptv_hot_tail(dose, structures, mask).ravel()
    assert out[-1] <= 66.0 + sum(calibration.SPREAD_GY["PTV70"]) + calibration.MAX_SLOPE * 1.0 + 1e-3


def test_regions_outside_targets_small_and_order():
    rng = np.random.default_rng(0)
    dose = rng.uniform(50, 72, (8, 8, 8)).astype(np.float32)
    mask = np.ones(dose.shape, bool)
    mask[..., 0] = False
    ptv70 = np.zeros(dose.shape, bool)
    ptv70[:4] = True
    ptv56 = np.zeros(dose.shape, bool)
    ptv56[2:] = True  # overlaps PTV70 in rows 2-3: those belong to PTV70's region
    tiny = np.zeros(dose.shape, bool)
    tiny[7, 7, 1:4] = True  # 3 voxels: under MIN_VOXELS
    structures = {"PTV70": ptv70, "PTV56": ptv56, "PTV63": tiny, "Brainstem": ~ptv70}
    regions = calibration.target_regions(structures, mask)
    assert list(regions) == ["PTV70", "PTV56"]
    assert not (regions["PTV70"] & regions["PTV56"]).any()
    # rows 4-7 outside slice 0, less the 3 voxels PTV63 holds (too few to map, still not PTV56's)
    assert regions["PTV56"].sum() == 4 * 8 * 7 - 3 and not regions["PTV56"][2:4].any()
    out = calibration.widen_ptv_hot_tail(dose, structures, mask)
    outside = ~(regions["PTV70"] | regions["PTV56"])
    np.testing.assert_array_equal(out[outside], dose[outside])
    assert out.dtype == np.float32 and (out >= dose - 1e-4).all()
    with pytest.raises(ValueError, match="differ in shape"):
        calibration.widen_ptv_hot_tail(dose, structures, mask[:4])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(20, 300), elements=st.floats(0, 80, width=32)),
    st.floats(0, 8),
    st.floats(0, 8),
)
def test_map_is_monotone_and_only_raises_the_upper_half(values, g1, g2):
    dose, structures, mask = _region_case(values)
    out = calibration.widen_ptv_hot_tail(dose, structures, mask, {"PTV70": (g1, g2)}).ravel()
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-3)  # the order of voxels by dose is kept
    assert np.all(out >= values - 1e-3)
    median = np.percentile(values.astype(np.float64), 50)
    np.testing.assert_allclose(out[values <= median], values[values <= median], atol=1e-4)


def test_reference_spreads_of_a_uniform_dose():
    values = np.linspace(60.0, 70.0, 101)
    dose, structures, mask = _region_case(values)

    class P:
        dose_gy, possible_dose_mask = dose, mask

    P.structures = structures
    ((g1, g2),) = calibration.reference_spreads([P]).values()
    assert g1 == pytest.approx(4.0, abs=1e-5) and g2 == pytest.approx(0.9, abs=1e-5)


def test_table_is_the_training_plans_mean(openkbp_train_dir):
    """SPREAD_GY is what the 169 real training patients' reference doses give (to its 2 decimals)."""
    patients = (openkbp.read_patient(d) for d in openkbp.list_patient_dirs(openkbp_train_dir))
    spreads = calibration.reference_spreads(patients)
    assert set(spreads) == set(calibration.SPREAD_GY)
    for roi, table in calibration.SPREAD_GY.items():
        np.testing.assert_allclose(spreads[roi], table, atol=0.006)


def test_widening_real_prediction_lowers_d1_error(openkbp_patient_dir):
    """On a real validation patient, a too homogeneous dose (the reference pulled towards each
    target's median, as a voxel-wise L1 network predicts) gets its D_1 back closer to the plan's."""
    from MambaDoseLib import metrics

    patient = openkbp.read_patient(openkbp_patient_dir)
    ref = metrics.reference_dvh_metrics(patient)
    smooth = patient.dose_gy.copy()
    for region in calibration.target_regions(patient.structures, patient.possible_dose_mask).values():
        median = np.median(smooth[region])
        smooth[region] = median + 0.4 * (smooth[region] - median)
    widened = calibration.widen_ptv_hot_tail(smooth, patient.structures, patient.possible_dose_mask)
    before = metrics.openkbp_dvh_metrics(smooth, patient.structures, patient.voxel_volume_mm3)
    after = metrics.openkbp_dvh_metrics(widened, patient.structures, patient.voxel_volume_mm3)
    d1 = [k for k in ref if k[1] == "D_1"]
    assert d1 and sum(abs(after[k] - ref[k]) for k in d1) < sum(abs(before[k] - ref[k]) for k in d1)


def _one_patient_low_by_2_percent(patient_dir, tmp_path):
    """A split of one real patient and a prediction folder holding its reference dose x 0.98."""
    split = tmp_path / "split"
    split.mkdir()
    (split / patient_dir.name).symlink_to(patient_dir, target_is_directory=True)
    pred = tmp_path / "pred"
    pred.mkdir()
    patient = openkbp.read_patient(patient_dir)
    openkbp.write_sparse_dose(pred / f"{patient.patient_id}.csv", patient.dose_gy * 0.98)
    return split, pred


def test_score_script_prints_both_rows(openkbp_patient_dir, tmp_path, capsys):
    script = load_script(REPO / "benchmarks" / "ptv_spread_calibration.py")
    split, pred = _one_patient_low_by_2_percent(openkbp_patient_dir, tmp_path)
    assert script.main(["score", str(split), str(pred), "--write", str(tmp_path / "w")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "w" / "pred" / f"{openkbp_patient_dir.name}.csv").exists()
    per_roi = tmp_path / "roi.csv"
    per_roi.write_text(
        "patient_id,roi,pred_D95,ref_D95,pred_HI,ref_HI\np,PTV70,60,62,0.1,0.2\np,PTV56,50,54,0.3,0.2\n"
    )
    assert script.main(["ptv-means", str(per_roi)]) == 0
    assert "mean predicted D95: 55.00 Gy (reference 58.00 Gy)" in capsys.readouterr().out
    assert "predicted dose / DVH" in printed and "widened   dose / DVH" in printed
    assert "PTV70 mean error" in printed or "PTV56 mean error" in printed


def test_error_anatomy_script(openkbp_patient_dir, tmp_path, capsys):
    """benchmarks/error_anatomy.py on one real patient: a dose 2 % low has its error in the bands
    that carry dose, every band's mean error <= 0, and the parotid lines for both doses."""
    script = load_script(REPO / "benchmarks" / "error_anatomy.py")
    split, pred = _one_patient_low_by_2_percent(openkbp_patient_dir, tmp_path)
    assert script.main([str(split), str(pred)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if ".." in line and "%" in line]
    assert len(rows) == len(script.BANDS_MM) - 1
    assert all(float(row[-1]) <= 0.0 for row in rows)
    assert sum(float(row[3]) for row in rows) == pytest.approx(100.0, abs=0.5)
    assert any(line.strip().startswith("reference") for line in lines)
    assert any(line.strip().startswith("prediction") for line in lines)
