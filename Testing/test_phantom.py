"""The synthetic head-and-neck phantom: shapes, anatomy, dose, physical consistency, OpenKBP folder."""

from __future__ import annotations

import numpy as np
import pytest
from MambaDoseLib.patient import OPENKBP_DIRECTION
from MambaDoseLib.phantom import make_phantom, make_phantom_folder
from MambaDoseLib.rois import OAR_NAMES, PRESCRIPTION_GY, ROI_NAMES


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def centroid_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Centroid (mm) along axes 0, 1, 2 relative to the grid centre."""
    idx = np.argwhere(mask).mean(axis=0)
    return (idx - (np.array(mask.shape) - 1) / 2) * np.array(spacing)


def test_shapes_types_and_geometry(phantom):
    p = phantom
    assert p.shape == (128, 128, 128)
    assert p.spacing_mm == (3.906, 3.906, 2.5)
    assert p.ct.dtype == np.float32 and p.dose_gy.dtype == np.float32
    assert sorted(p.structures) == sorted(ROI_NAMES)
    assert all(m.dtype == bool and m.shape == p.shape and m.any() for m in p.structures.values())
    np.testing.assert_array_equal(p.direction, OPENKBP_DIRECTION)
    # voxel (0, 0, 0) + direction @ (centre index * spacing) is the physical origin (0, 0, 0)
    centre = np.array(p.origin_mm) + OPENKBP_DIRECTION @ (63.5 * np.array(p.spacing_mm))
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)


def test_ct_numbers(phantom):
    p = phantom
    body = p.possible_dose_mask
    assert np.all(p.ct[~body] == 0)
    assert 1020 < np.median(p.ct[body]) < 1060
    assert np.median(p.ct[p.structures["Mandible"]]) > 1900
    assert p.ct.max() < 2200 and p.ct[body].min() >= 1
    assert (p.ct[body] < 300).sum() > 1000  # airway and lungs


def test_anatomy_in_place(phantom):
    """Axis 0: anterior -> posterior, axis 1: right -> left, axis 2: superior -> inferior."""
    s, sp = phantom.structures, phantom.spacing_mm
    c = {name: centroid_mm(mask, sp) for name, mask in s.items()}
    assert c["RightParotid"][1] < -30 and c["LeftParotid"][1] > 30  # right is low axis-1
    assert c["SpinalCord"][0] > c["Esophagus"][0] > c["Larynx"][0]  # posterior to anterior
    assert c["Mandible"][0] < c["PTV70"][0]  # mandible anterior
    assert c["Brainstem"][2] < c["Mandible"][2] < c["Larynx"][2] < c["Esophagus"][2]  # sup -> inf
    assert c["Brainstem"][0] > 0  # posterior half
    for name in OAR_NAMES:
        assert not (s[name] & s["PTV70"]).any() or name == "Larynx", name
    assert not (s["SpinalCord"] & (s["PTV56"] | s["PTV63"] | s["PTV70"])).any()


def test_dose_plausible(phantom):
    p = phantom
    dose, body = p.dose_gy, p.possible_dose_mask
    assert np.all(dose[~body] == 0) and dose.min() >= 0
    for name, rx in PRESCRIPTION_GY.items():
        d95 = np.percentile(dose[p.structures[name]], 5)
        assert rx <= d95 <= 1.02 * rx + 1e-3, name
    assert dose.max() <= 1.02 * 70.0 + 1e-3
    assert np.mean(dose[p.structures["SpinalCord"]]) < 45.0
    # smooth fall-off: the dose 2 cm outside PTV70 (away from the other PTVs) is well below 70 Gy
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~p.structures["PTV70"], sampling=p.spacing_mm)
    shell = (d > 18) & (d < 22) & body
    others = ndimage.distance_transform_edt(
        ~(p.structures["PTV63"] | p.structures["PTV56"]), sampling=p.spacing_mm
    )
    assert np.median(dose[shell & (others > 40)]) < 30.0


def test_seed_and_without_dose():
    a, b = make_phantom(seed=1, with_dose=False), make_phantom(seed=1, with_dose=False)
    assert a.dose_gy is None
    np.testing.assert_array_equal(a.ct, b.ct)
    c = make_phantom(seed=2, with_dose=False)
    assert not np.array_equal(a.structures["PTV70"], c.structures["PTV70"])


def test_same_physical_anatomy_at_other_spacing():
    """A 2 mm isotropic phantom describes the same anatomy: volumes and centroids agree."""
    coarse = make_phantom((64, 64, 64), spacing_mm=(4.0, 4.0, 4.0), with_dose=False)
    fine = make_phantom((128, 128, 128), spacing_mm=(2.0, 2.0, 2.0), with_dose=False)
    for name in ("PTV70", "Brainstem", "LeftParotid", "Larynx"):
        vol_c = coarse.structures[name].sum() * 64.0
        vol_f = fine.structures[name].sum() * 8.0
        assert vol_c == pytest.approx(vol_f, rel=0.12), name
        np.testing.assert_allclose(
            centroid_mm(coarse.structures[name], coarse.spacing_mm),
            centroid_mm(fine.structures[name], fine.spacing_mm),
            atol=2.5,
            err_msg=name,
        )
    assert coarse.origin_mm != fine.origin_mm


def test_small_grid_leaves_out_structures_outside_it():
    p = make_phantom((32, 32, 16), with_dose=True)
    assert p.shape == (32, 32, 16)
    assert "Esophagus" not in p.structures  # starts 55 mm below the centre; grid reaches 20 mm
    assert all(m.any() for m in p.structures.values())


def test_phantom_folder_round_trip(tmp_path):
    from MambaDoseLib.openkbp import read_patient

    folder = make_phantom_folder(tmp_path / "pt_3", seed=3)
    back = read_patient(folder)
    ref = make_phantom(seed=3)
    assert back.patient_id == "pt_3" and back.spacing_mm == ref.spacing_mm
    np.testing.assert_array_equal(back.ct, ref.ct)
    np.testing.assert_array_equal(back.dose_gy, ref.dose_gy)
    np.testing.assert_array_equal(back.possible_dose_mask, ref.possible_dose_mask)
    assert back.structures.keys() == ref.structures.keys()
    for name, mask in ref.structures.items():
        np.testing.assert_array_equal(back.structures[name], mask)
