"""Model input features: normalisation, PTV map, PSDM, channel list, CT-only body mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from MambaDoseLib import features as F
from MambaDoseLib.patient import Patient
from MambaDoseLib.rois import MAX_PRESCRIPTION_GY, OAR_NAMES, ROI_NAMES


def small_patient(shape=(24, 20, 16), spacing=(2.0, 3.0, 5.0)) -> Patient:
    """A box patient: body, PTV70 inside PTV56 (nested), a cubic Brainstem, no other ROIs."""
    ct = np.zeros(shape, np.float32)
    ct[2:-2, 2:-2, :] = 1040.0
    body = ct > 0
    ptv56 = np.zeros(shape, bool)
    ptv56[6:18, 6:14, 4:12] = True
    ptv70 = np.zeros(shape, bool)
    ptv70[9:15, 8:12, 6:10] = True
    brainstem = np.zeros(shape, bool)
    brainstem[3:5, 3:5, 1:3] = True
    return Patient(
        "pt_test",
        ct,
        spacing,
        body,
        {"PTV56": ptv56, "PTV70": ptv70, "Brainstem": brainstem},
        dose_gy=np.zeros(shape, np.float32),
    )


def test_channel_list_order_and_names():
    assert len(F.CHANNELS) == 20
    assert F.CHANNELS[:3] == ("ct", "ptv_map", "possible_dose_mask")
    assert F.CHANNELS[3:10] == tuple(f"mask_{n}" for n in OAR_NAMES)
    assert F.CHANNELS[10:] == tuple(f"psdm_{n}" for n in ROI_NAMES)


def test_normalise_ct_clips_and_scales():
    ct = np.array([-100.0, 0.0, 1250.0, 2500.0, 4000.0])
    np.testing.assert_allclose(F.normalise_ct(ct), [-1.0, -1.0, 0.0, 1.0, 1.0])
    assert F.normalise_ct(ct).dtype == np.float32
    assert F.CT_RANGE == (0.0, 2500.0)


def test_normalise_dose_and_inverse():
    dose = np.array([0.0, 20.0, 40.0, 70.0, 80.0], np.float32)
    x = F.normalise_dose(dose)
    np.testing.assert_allclose(x, [-1.0, -0.5, 0.0, 0.75, 1.0])
    np.testing.assert_allclose(F.denormalise_dose(x), dose, atol=1e-5)
    # clipped on the way in, not on the way back (except dose >= 0)
    np.testing.assert_allclose(F.normalise_dose([-5.0, 90.0]), [-1.0, 1.0])
    np.testing.assert_allclose(F.denormalise_dose([-1.5, 1.25]), [0.0, 90.0])
    assert F.DOSE_RANGE_GY == (0.0, 80.0)


def test_ptv_map_takes_highest_prescription():
    p = small_patient()
    m = F.ptv_map(p)
    assert m.dtype == np.float32
    assert m[10, 9, 7] == pytest.approx(1.0)  # inside PTV70 (and PTV56)
    assert m[7, 7, 5] == pytest.approx(56.0 / MAX_PRESCRIPTION_GY)  # PTV56 only
    assert m[0, 0, 0] == 0.0
    np.testing.assert_allclose(np.unique(m), [0.0, 0.8, 1.0], rtol=1e-6)


def test_signed_distance_anisotropic_spacing_and_sign():
    shape, spacing = (21, 21, 21), (1.0, 2.0, 3.0)
    mask = np.zeros(shape, bool)
    mask[10, 10, 10] = True  # one voxel: its own boundary
    d = F.signed_distance_mm(mask, spacing)
    assert d[10, 10, 10] == pytest.approx(0.0, abs=1e-6)
    assert d[14, 10, 10] == pytest.approx(4.0, abs=1e-4)  # 4 voxels along axis 0 (1 mm)
    assert d[10, 14, 10] == pytest.approx(8.0, abs=1e-4)  # 4 voxels along axis 1 (2 mm)
    assert d[10, 10, 14] == pytest.approx(12.0, abs=1e-4)  # 4 voxels along axis 2 (3 mm)
    assert d[13, 14, 12] == pytest.approx(np.sqrt(3.0**2 + 8.0**2 + 6.0**2), abs=1e-4)
    # a big block: negative inside, distance to its nearest boundary voxel
    block = np.zeros(shape, bool)
    block[2:19, 2:19, 2:19] = True
    d = F.signed_distance_mm(block, spacing)
    assert d[10, 10, 10] < 0
    assert d[10, 10, 10] == pytest.approx(-8.0, abs=1e-4)  # nearest boundary: 8 voxels along axis 0
    assert d[5, 10, 10] == pytest.approx(-3.0, abs=1e-4)
    assert d[0, 10, 10] == pytest.approx(2.0, abs=1e-4)  # outside: distance to the block
    assert d[2, 10, 10] == 0.0


def test_psdm_formula_clip_and_weights():
    shape, spacing = (40, 40, 40), (4.0, 4.0, 2.5)
    mask = np.zeros(shape, bool)
    mask[18:22, 18:22, 18:22] = True
    d = F.signed_distance_mm(mask, spacing)
    for name, w in (("PTV70", 1.0), ("PTV63", 0.9), ("PTV56", 0.8), ("Larynx", 1.0)):
        assert F.psdm_weight(name) == pytest.approx(w)
        psdm = F.psdm(mask, spacing, F.psdm_weight(name))
        np.testing.assert_allclose(psdm, w * np.clip(d, -50.0, 50.0) / 50.0, atol=1e-6)
        assert psdm.max() == pytest.approx(w) and psdm.min() >= -w
    # a voxel 8 voxels (20 mm) away along axis 2 of a PTV63
    assert F.psdm(mask, spacing, 0.9)[20, 20, 29] == pytest.approx(0.9 * 20.0 / 50.0, abs=1e-5)


def test_psdm_crop_equals_full_volume_computation():
    rng = np.random.default_rng(1)
    shape, spacing = (48, 40, 36), (3.0, 2.0, 4.0)
    for _ in range(3):
        mask = np.zeros(shape, bool)
        lo = rng.integers(0, [40, 30, 30])
        mask[lo[0] : lo[0] + 6, lo[1] : lo[1] + 8, lo[2] : lo[2] + 5] = True
        full = np.clip(F.signed_distance_mm(mask, spacing), -20.0, 20.0) / 20.0
        np.testing.assert_allclose(F.psdm(mask, spacing, 1.0, clip_mm=20.0), full, atol=1e-6)


def test_psdm_absent_structure_is_far():
    assert np.all(F.psdm(None, (1.0, 1.0, 1.0), 0.8, shape=(3, 4, 5)) == np.float32(0.8))
    assert np.all(F.psdm(np.zeros((3, 4, 5), bool), (1.0, 1.0, 1.0), 1.0) == 1.0)


def test_build_features_default_channels():
    p = small_patient()
    x = F.build_features(p)
    assert x.shape == (20, *p.shape) and x.dtype == np.float32
    c = {name: x[i] for i, name in enumerate(F.CHANNELS)}
    np.testing.assert_array_equal(c["ct"], F.normalise_ct(p.ct))
    np.testing.assert_array_equal(c["possible_dose_mask"], p.possible_dose_mask.astype(np.float32))
    np.testing.assert_array_equal(c["mask_Brainstem"], p.structures["Brainstem"].astype(np.float32))
    assert not c["mask_Larynx"].any()  # not contoured
    assert np.all(c["psdm_Larynx"] == 1.0) and np.all(c["psdm_PTV63"] == np.float32(0.9))
    assert c["psdm_PTV70"][11, 9, 7] < 0 < c["psdm_PTV70"][0, 0, 0]


def test_build_features_chosen_channels_and_2p5d():
    p = small_patient()
    p.ct[:, :, 5] = 2500.0
    x = F.build_features(p, ("ct_prev", "ct", "ct_next", "psdm_PTV70"))
    assert x.shape == (4, *p.shape)
    ct = F.normalise_ct(p.ct)
    np.testing.assert_array_equal(x[0][..., 6], ct[..., 5])
    np.testing.assert_array_equal(x[2][..., 4], ct[..., 5])
    np.testing.assert_array_equal(x[0][..., 0], ct[..., 0])  # edge slice repeated
    np.testing.assert_array_equal(x[2][..., -1], ct[..., -1])
    np.testing.assert_array_equal(x[1], ct)


def test_neighbour_channels_at_any_offset():
    p = small_patient()
    p.ct[:, :, 5] = 2500.0
    x = F.build_features(p, ("ct_prev2", "ptv_map_next3", "ct_next", "ct_next"))
    ct, ptv = F.normalise_ct(p.ct), F.ptv_map(p)
    k = p.shape[-1]
    for j in range(k):
        np.testing.assert_array_equal(x[0][..., j], ct[..., max(j - 2, 0)])
        np.testing.assert_array_equal(x[1][..., j], ptv[..., min(j + 3, k - 1)])
    assert F.split_neighbour("psdm_PTV70_prev12") == ("psdm_PTV70", -12)
    assert F.split_neighbour("mask_Brainstem") == ("mask_Brainstem", 0)


@given(base=st.sampled_from(F.CHANNELS), offset=st.integers(-40, 40))
def test_split_neighbour_inverts_the_naming(base, offset):
    side = "prev" if offset < 0 else "next"
    n = abs(offset)
    name = base if offset == 0 else f"{base}_{side}{n if n > 1 else ''}"
    assert F.split_neighbour(name) == (base, offset)
    F.check_channels([name])


@pytest.mark.parametrize(
    "name",
    [
        "hu",
        "mask_PTV99",
        "psdm_Body",
        "ct_after",
        "mask_",
        "ct_prev0",
        "ct_next02",
        "ct_prev-1",
        "ct_next1",
        "ct_prev\n",
    ],
)
def test_unknown_channel_raises(name):
    with pytest.raises(ValueError, match="unknown feature channel"):
        F.build_features(small_patient(), ("ct", name))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_body_mask_fills_cavities_and_drops_couch():
    shape = (60, 60, 10)
    ct = np.zeros(shape, np.float32)
    a, b = np.ogrid[:60, :60]
    body2d = (a - 28) ** 2 / 20**2 + (b - 30) ** 2 / 25**2 <= 1
    lung2d = (a - 28) ** 2 + (b - 30) ** 2 <= 36
    ct[body2d] = 1040.0
    ct[lung2d] = 200.0  # an air-like cavity inside
    ct[55:57, 5:55, :] = 1500.0  # couch, apart from the body
    ct += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32) * (ct > 0)
    mask = F.body_mask_from_ct(ct, (2.0, 2.0, 3.0))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, np.broadcast_to(body2d[..., None], shape))


def test_body_mask_of_empty_ct_is_empty():
    assert not F.body_mask_from_ct(np.zeros((8, 8, 4), np.float32), (1.0, 1.0, 1.0)).any()


def test_body_mask_matches_phantom():
    from MambaDoseLib.phantom import make_phantom

    p = make_phantom(with_dose=False)
    assert dice(F.body_mask_from_ct(p.ct, p.spacing_mm), p.possible_dose_mask) >= 0.99


@pytest.mark.openkbp
def test_body_mask_dice_on_real_patients(openkbp_validation_dir):
    """CT-only body mask vs OpenKBP's possible-dose mask, on the mask's axial extent (the dose grid
    of the planning system stops at slices the CT cannot tell; see docs/features.md)."""
    from MambaDoseLib.openkbp import list_patient_dirs, read_patient

    folders = [
        f for f in list_patient_dirs(openkbp_validation_dir) if f.name in ("pt_202", "pt_209", "pt_231")
    ]
    assert len(folders) == 3
    for folder in folders:
        p = read_patient(folder)
        mask = F.body_mask_from_ct(p.ct, p.spacing_mm)
        slices = p.possible_dose_mask.any(axis=(0, 1))
        assert dice(mask[..., slices], p.possible_dose_mask[..., slices]) >= 0.95, folder.name


@pytest.mark.openkbp
def test_features_of_real_patient(openkbp_patient_dir):
    from MambaDoseLib.openkbp import read_patient

    p = read_patient(openkbp_patient_dir)
    x = F.build_features(p)
    assert x.shape == (20, 128, 128, 128) and np.isfinite(x).all()
    assert x.min() >= -1.0 and x.max() <= 1.0
    for i, name in enumerate(F.CHANNELS):
        if name.startswith("psdm_") and name[5:] in p.structures:
            inside = p.structures[name[5:]]
            assert (x[i][inside] <= 0).all() and (x[i][~inside] > 0).all(), name
