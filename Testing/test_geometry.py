"""Geometry: Volume <-> SimpleITK / Slicer RAS, resampling in physical space, the model grid,
and the Patient <-> Volume round trip."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MambaDoseLib.geometry import (
    MODEL_INPLANE_SIZE,
    MODEL_SPACING_MM,
    Grid,
    Volume,
    hu_to_offset_ct,
    model_grid_for,
    offset_ct_to_hu,
    patient_grid,
    patient_to_volumes,
    physical_overlap,
    resample_to,
    to_openkbp_patient,
)
from MambaDoseLib.patient import OPENKBP_DIRECTION, Patient


def _threshold_body(ct_offset: np.ndarray, spacing_mm) -> np.ndarray:
    return ct_offset > 500


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def _physical_points(grid: Grid) -> np.ndarray:
    """(K, J, I, 3) LPS positions of every voxel centre."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.size[::-1]), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ grid.index_to_physical().T)[..., :3]


def test_volume_sitk_round_trip():
    rng = np.random.default_rng(0)
    vol = Volume(
        rng.normal(size=(4, 5, 6)).astype(np.float32),
        (0.8, 1.2, 3.0),
        (10.0, -20.0, 5.5),
        _rotation(30),
        "note",
    )
    image = vol.to_sitk()
    assert image.GetSize() == (6, 5, 4)
    back = Volume.from_sitk(image)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx(vol.spacing)
    assert back.origin == pytest.approx(vol.origin)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    assert back.description == "note"
    # the documented index -> physical rule is ITK's
    assert image.TransformIndexToPhysicalPoint((2, 3, 1)) == pytest.approx(
        tuple((vol.grid.index_to_physical() @ [2, 3, 1, 1])[:3])
    )


def test_slicer_ijk_to_ras():
    # Slicer's matrix for an axial CT stored LPS with identity direction: x and y negated
    ijk_to_ras = np.array([[-0.9, 0, 0, 120.0], [0, -0.9, 0, 100.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    vol = Volume.from_ijk_to_ras(np.zeros((3, 4, 5), np.int16), ijk_to_ras)
    assert vol.spacing == pytest.approx((0.9, 0.9, 2.5))
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    assert vol.origin == pytest.approx((-120.0, -100.0, -50.0))
    np.testing.assert_allclose(vol.ijk_to_ras(), ijk_to_ras, atol=1e-12)
    # an oblique, anisotropic matrix round-trips too
    m = np.eye(4)
    m[:3, :3] = _rotation(17) @ np.diag([0.7, 1.1, 3.0])
    m[:3, 3] = (1.0, 2.0, 3.0)
    np.testing.assert_allclose(Volume.from_ijk_to_ras(np.zeros((2, 2, 2)), m).ijk_to_ras(), m, atol=1e-12)


def test_resample_same_grid_is_exact_copy():
    rng = np.random.default_rng(1)
    vol = Volume(rng.normal(size=(5, 6, 7)).astype(np.float32), (1.0, 2.0, 3.0), (1, 2, 3), _rotation(10))
    out = resample_to(vol, vol.grid)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.array is not vol.array


def test_resample_keeps_physical_positions():
    """A field linear in physical space is reproduced exactly by linear resampling onto a grid of
    another orientation and spacing (points inside the source)."""
    src_grid = Grid((60, 50, 40), (1.0, 1.0, 1.0), (-30.0, -25.0, -20.0), np.eye(3))
    coeff = np.array([0.5, -1.5, 2.0])
    values = (_physical_points(src_grid) @ coeff + 7.0).astype(np.float32)
    source = Volume.from_grid(values, src_grid)
    target = Grid((10, 12, 8), (3.906, 3.906, 2.5), (-17.0, -20.0, 8.0), OPENKBP_DIRECTION)
    out = resample_to(source, target, "linear")
    expected = _physical_points(target) @ coeff + 7.0
    np.testing.assert_allclose(out.array, expected, atol=1e-3)


def test_mask_rule_keeps_volume():
    """A sphere resampled from 1 mm to the model grid keeps its volume within a few percent."""
    grid = Grid((80, 80, 80), (1.0, 1.0, 1.0), (-40.0, -40.0, -40.0))
    sphere = np.linalg.norm(_physical_points(grid), axis=-1) <= 25.0
    mask = Volume.from_grid(sphere, grid)
    coarse = Grid((24, 24, 36), MODEL_SPACING_MM, (-45.0, -45.0, 44.0), OPENKBP_DIRECTION)
    out = resample_to(mask, coarse, "mask")
    assert out.array.dtype == bool
    volume_mm3 = out.array.sum() * np.prod(MODEL_SPACING_MM)
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 25.0**3, rel=0.05)


def test_antialias_smooths_only_when_downsampling():
    rng = np.random.default_rng(2)
    grid = Grid((64, 64, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    noise = Volume.from_grid(rng.normal(size=(40, 64, 64)).astype(np.float32), grid)
    coarse = Grid((16, 16, 16), (4.0, 4.0, 2.5), (2.0, 2.0, 1.0))
    plain = resample_to(noise, coarse, "linear").array
    smooth = resample_to(noise, coarse, "linear", antialias=True).array
    assert smooth.std() < 0.5 * plain.std()


def test_physical_overlap():
    a = Grid((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert physical_overlap(a, Grid((5, 5, 5), (2.0, 2.0, 2.0), (8.0, 8.0, 8.0)))
    assert not physical_overlap(a, Grid((5, 5, 5), (1.0, 1.0, 1.0), (100.0, 0.0, 0.0)))


def test_hu_offset_conversion():
    hu = np.array([-2000.0, -1024.0, 0.0, 1000.0])
    np.testing.assert_array_equal(hu_to_offset_ct(hu), [0.0, 0.0, 1024.0, 2024.0])
    np.testing.assert_array_equal(offset_ct_to_hu(np.array([0.0, 1024.0])), [-1024.0, 0.0])


def _body_ct(centre_lps=(12.0, -30.0), radius_mm=70.0) -> Volume:
    """A 1.5 mm axial CT (identity direction) with an elliptic 'body' of water off-centre."""
    grid = Grid((300, 260, 30), (1.5, 1.5, 3.0), (-200.0, -210.0, -40.0))
    p = _physical_points(grid)
    body = ((p[..., 0] - centre_lps[0]) / radius_mm) ** 2 + (
        (p[..., 1] - centre_lps[1]) / (0.8 * radius_mm)
    ) ** 2 <= 1
    return Volume.from_grid(np.where(body, 0.0, -1000.0).astype(np.float32), grid)


def test_model_grid_centred_on_body():
    ct = _body_ct()
    grid = model_grid_for(ct, body_mask_fn=_threshold_body)
    assert grid.size[:2] == (MODEL_INPLANE_SIZE, MODEL_INPLANE_SIZE)
    assert grid.spacing == pytest.approx(MODEL_SPACING_MM)
    np.testing.assert_allclose(grid.direction, OPENKBP_DIRECTION)
    # in-plane centre on the body's centre (within a coarse voxel)
    centre = grid.index_to_physical() @ [(MODEL_INPLANE_SIZE - 1) / 2, (MODEL_INPLANE_SIZE - 1) / 2, 0, 1]
    assert centre[0] == pytest.approx(12.0, abs=4.0)
    assert centre[1] == pytest.approx(-30.0, abs=4.0)
    # slices cover the CT's superior-inferior extent (87 mm -> 35 slices of 2.5 mm), top slice superior
    assert grid.size[2] == 35
    z = grid.corners()[:, 2]
    assert z.max() <= 47.0 + 1e-6 and z.min() >= -40.0 - 1e-6
    assert grid.origin[2] == pytest.approx(z.max())
    # a given body mask gives the same grid
    body = ct.with_array(ct.array > -500)
    same = model_grid_for(ct, body)
    assert same.same_as(grid, tol_mm=1e-6)


def test_to_openkbp_patient_layout():
    """A marker at a physical point lands at the OpenKBP index that OPENKBP_DIRECTION predicts."""
    ct = _body_ct()
    grid = model_grid_for(ct, body_mask_fn=_threshold_body)
    marker_ijk = np.array([40, 70, 12])  # OpenKBP a[i, j, k]
    point = (grid.index_to_physical() @ np.r_[marker_ijk, 1])[:3]
    p = _physical_points(ct.grid)
    mask = ct.with_array(np.linalg.norm(p - point, axis=-1) <= 4.0)
    patient = to_openkbp_patient(ct, {"Marker": mask}, grid, possible_dose_mask=np.ones((128, 128, 35), bool))
    assert patient.ct.shape == (128, 128, 35)
    assert patient.direction == pytest.approx(OPENKBP_DIRECTION)
    centre = np.argwhere(patient.structures["Marker"]).mean(axis=0)
    np.testing.assert_allclose(centre, marker_ijk, atol=0.5)
    # axis 0 runs anterior -> posterior (+y), axis 1 right -> left (+x), axis 2 superior -> inferior
    np.testing.assert_allclose(
        grid.index_to_physical()[:3, :3], OPENKBP_DIRECTION @ np.diag(MODEL_SPACING_MM)
    )
    # outside the CT the offset CT is 0
    assert patient.ct.min() == 0.0


def _round_trip(patient: Patient) -> Patient:
    ct, masks = patient_to_volumes(patient)
    ct = Volume.from_sitk(ct.to_sitk())
    masks = {n: Volume.from_sitk(m.to_sitk()) for n, m in masks.items()}
    return to_openkbp_patient(ct, masks, patient_grid(patient), possible_dose_mask=patient.possible_dose_mask)


def test_patient_round_trip_exact_small():
    rng = np.random.default_rng(3)
    shape = (12, 10, 8)
    patient = Patient(
        "pt",
        rng.integers(0, 3000, size=shape).astype(np.float32),
        (3.906, 3.906, 2.5),
        rng.random(shape) > 0.5,
        {"A": rng.random(shape) > 0.7, "B": rng.random(shape) > 0.2},
        origin_mm=(5.0, -3.0, 100.0),
    )
    back = _round_trip(patient)
    np.testing.assert_array_equal(back.ct, patient.ct)
    assert back.structures.keys() == patient.structures.keys()
    for name, mask in patient.structures.items():
        np.testing.assert_array_equal(back.structures[name], mask)
    assert back.spacing_mm == pytest.approx(patient.spacing_mm)
    assert back.origin_mm == pytest.approx(patient.origin_mm)


def test_phantom_round_trip_exact():
    phantom = pytest.importorskip("MambaDoseLib.phantom")
    patient = phantom.make_phantom(shape=(128, 128, 48), with_dose=False)
    back = _round_trip(patient)
    np.testing.assert_array_equal(back.ct, patient.ct)
    assert back.structures.keys() == patient.structures.keys()
    for name, mask in patient.structures.items():
        np.testing.assert_array_equal(back.structures[name], mask)


def test_volume_from_sitk_file(tmp_path):
    vol = Volume(
        np.arange(24, dtype=np.int16).reshape(2, 3, 4), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), OPENKBP_DIRECTION
    )
    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(vol.to_sitk(), str(path))
    back = Volume.from_sitk(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.direction, OPENKBP_DIRECTION, atol=1e-6)
    assert back.origin == pytest.approx(vol.origin, abs=1e-4)
