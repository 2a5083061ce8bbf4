"""In-plane resampling to one common voxel size (MambaDoseLib.spacing), prediction through it
(inference.predict_patient) and the model card key ``inplane_spacing_mm``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from MambaDoseLib import inference
from MambaDoseLib.errors import InputError, WeightsError
from MambaDoseLib.patient import OPENKBP_DIRECTION, Patient
from MambaDoseLib.phantom import make_phantom, phantom_origin_mm
from MambaDoseLib.spacing import (
    inplane_map_for,
    resample_dose_back,
    resample_inplane,
    resample_mask_inplane,
    resample_patient_inplane,
)


def _physical(patient: Patient) -> np.ndarray:
    """(I, J, 3) LPS positions (mm) of the voxel centres of slice 0."""
    i, j = np.meshgrid(np.arange(patient.shape[0]), np.arange(patient.shape[1]), indexing="ij")
    steps = np.stack([i * patient.spacing_mm[0], j * patient.spacing_mm[1], np.zeros_like(i, float)], -1)
    return np.asarray(patient.origin_mm) + steps @ np.asarray(patient.direction).T


def _centre(patient: Patient) -> np.ndarray:
    half = (np.asarray(patient.shape) - 1) / 2 * np.asarray(patient.spacing_mm)
    return np.asarray(patient.origin_mm) + np.asarray(patient.direction) @ half


def _field_patient(shape, spacing_mm, field, pid="pt_field") -> Patient:
    """A patient whose CT and dose hold ``field(x_mm, y_mm)`` on every slice, mask everywhere."""
    p = Patient(
        pid,
        np.zeros(shape, np.float32),
        spacing_mm,
        np.ones(shape, bool),
        origin_mm=phantom_origin_mm(shape, spacing_mm),
        direction=OPENKBP_DIRECTION.copy(),
    )
    xyz = _physical(p)
    values = field(xyz[..., 0], xyz[..., 1]).astype(np.float32)
    p.ct = np.repeat(values[..., None], shape[2], axis=2)
    p.dose_gy = p.ct.copy()
    return p


def _linear(x, y):
    return 30.0 + 0.05 * x - 0.08 * y


def _smooth(x, y):
    return 60.0 * np.exp(-(x**2 + (y - 10.0) ** 2) / (2 * 60.0**2))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("native", [2.734, 4.688, 5.422])
def test_resampled_values_sit_at_their_physical_place_and_round_trip(native):
    p = _field_patient((64, 64, 3), (native, native, 2.5), _linear)
    r, m = resample_patient_inplane(p, 3.906, size=80)
    assert r.shape == (80, 80, 3) and r.spacing_mm == (3.906, 3.906, 2.5)
    # a linear field is reproduced exactly where the resampled voxel lies inside the native field
    rows, cols = (m.native_index_of_resampled(n) for n in (0, 1))
    inside = ((rows >= 0) & (rows <= 63))[:, None] & ((cols >= 0) & (cols <= 63))[None, :]
    xyz = _physical(r)
    expected = _linear(xyz[..., 0], xyz[..., 1])
    np.testing.assert_allclose(r.ct[..., 1][inside], expected[inside], atol=2e-3)
    np.testing.assert_allclose(r.dose_gy[..., 1][inside], expected[inside], atol=2e-3)
    assert np.all(r.ct[..., 1][~inside] == 0.0)  # 0 outside the native field
    # back to the native grid: exact again where both resampled neighbours of a native voxel lie
    # in the native field (at its edge the one inside stands alone: within the mask)
    back = resample_dose_back(r.dose_gy, m, within=r.possible_dose_mask)
    assert back.shape == p.shape and back.dtype == np.float32
    exact = []
    for n, ok in enumerate((inside.any(axis=1), inside.any(axis=0))):
        u = m.resampled_index_of_native(n)
        lo = np.clip(np.floor(u).astype(int), 0, 79)
        hi = np.clip(np.ceil(u).astype(int), 0, 79)
        exact.append((u >= 0) & (u <= 79) & ok[lo] & ok[hi])
    exact = exact[0][:, None] & exact[1][None, :]
    assert exact.sum() > 0.5 * exact.size
    np.testing.assert_allclose(back[..., 0][exact], p.dose_gy[..., 0][exact], atol=2e-3)
    covered = m.native_covered()
    assert np.all(back[..., 0][~covered] == 0.0)
    edge = covered & ~exact  # |error| <= |gradient| * resampled voxel
    assert np.all(np.abs(back[..., 0] - p.dose_gy[..., 0])[edge] <= 0.1 * 3.906 + 1e-3)


def test_round_trip_of_a_smooth_field_stays_within_a_small_error():
    p = _field_patient((128, 128, 2), (4.688, 4.688, 3.0), _smooth)
    r, m = resample_patient_inplane(p, 3.906)
    back = resample_dose_back(r.dose_gy, m)
    covered = m.native_covered()
    err = np.abs(back[..., 0] - p.dose_gy[..., 0])[covered]
    # a 60 Gy Gaussian of 60 mm sigma: linear interpolation errs by <= h^2 / 8 * |f''| = 0.046 Gy
    # per axis and way at its peak (h = 4.688 mm, f'' = 60 / 60^2 Gy/mm^2)
    assert err.max() < 4 * 0.046 and err.mean() < 0.02


@pytest.mark.parametrize(("shape", "native", "size"), [((64, 64, 4), 4.5, 128), ((63, 50, 2), 2.9, 31)])
def test_physical_centre_and_slices_are_kept(shape, native, size):
    p = make_phantom(shape, (native, native, 2.5), seed=3)
    r, m = resample_patient_inplane(p, 3.906, size=size)
    np.testing.assert_allclose(_centre(r), _centre(p), atol=1e-9)
    assert r.shape == (size, size, shape[2]) == m.resampled_shape
    assert r.spacing_mm[2] == p.spacing_mm[2] and r.origin_mm[2] == p.origin_mm[2]
    np.testing.assert_array_equal(r.direction, p.direction)


def test_same_grid_is_the_identity():
    p = make_phantom((128, 128, 4), (3.906, 3.906, 2.5), seed=1)
    r, m = resample_patient_inplane(p, 3.906)
    assert r is p and m.is_identity and m.pdm_voxels_outside == 0
    back = resample_dose_back(p.dose_gy, m)
    assert back is not p.dose_gy and np.array_equal(back, p.dose_gy)
    assert np.array_equal(resample_mask_inplane(p.possible_dose_mask, m), p.possible_dose_mask)
    # the same spacing on another in-plane size is not the same grid (centred, padded with 0)
    small = make_phantom((100, 100, 4), (3.906, 3.906, 2.5), seed=1)
    r2, m2 = resample_patient_inplane(small, 3.906)
    assert not m2.is_identity and r2.shape == (128, 128, 4)
    np.testing.assert_allclose(r2.ct[14:114, 14:114], small.ct, atol=1e-3)
    assert np.all(r2.ct[:14] == 0) and np.all(r2.ct[114:] == 0)


def test_masks_stay_masks_and_keep_their_area():
    p = make_phantom((96, 96, 24), (4.688, 4.688, 2.5), seed=2)
    r, _ = resample_patient_inplane(p, 3.906)
    area = lambda mask, patient: mask.sum() * patient.spacing_mm[0] * patient.spacing_mm[1]  # noqa: E731
    assert r.possible_dose_mask.dtype == bool and set(r.structures) == set(p.structures)
    assert abs(area(r.possible_dose_mask, r) / area(p.possible_dose_mask, p) - 1) < 0.01
    for name, mask in r.structures.items():
        assert mask.dtype == bool
        if p.structures[name].sum() > 200:
            assert abs(area(mask, r) / area(p.structures[name], p) - 1) < 0.06, name


def test_dose_is_interpolated_within_the_possible_dose_mask():
    """A constant dose inside the mask (0 outside, as in OpenKBP) stays constant on the
    resampled mask and back on the native one: the zeros outside do not pull its edge down."""
    p = make_phantom((64, 64, 6), (4.688, 4.688, 2.5), seed=4)
    p.dose_gy = np.where(p.possible_dose_mask, np.float32(50.0), np.float32(0.0))
    r, m = resample_patient_inplane(p, 3.906)
    np.testing.assert_allclose(r.dose_gy[r.possible_dose_mask], 50.0, atol=1e-4)
    back = resample_dose_back(r.dose_gy, m, within=r.possible_dose_mask)
    np.testing.assert_allclose(back[p.possible_dose_mask], 50.0, atol=1e-4)
    plain = resample_dose_back(resample_inplane(p.dose_gy, m), m)  # what plain linear would give
    assert plain[p.possible_dose_mask].min() < 40.0


def test_field_of_view_warning_names_the_patient_and_counts_voxels(caplog):
    shape, native = (128, 128, 2), (5.422, 5.422, 3.0)
    p = make_phantom(shape, native, seed=5, patient_id="pt_wide")
    p.possible_dose_mask = np.ones(shape, bool)
    with caplog.at_level(logging.WARNING, logger="MambaDoseLib.spacing"):
        _, m = resample_patient_inplane(p, 3.906)
    # native voxels farther than 127/2 resampled voxels from the centre along axis 0 or 1
    offsets = (np.arange(128) - 63.5) * 5.422
    inside = np.abs(offsets) <= 63.5 * 3.906
    expected = 2 * (128 * 128 - inside.sum() ** 2)
    assert m.pdm_voxels_outside == expected > 0
    assert np.array_equal(m.native_covered(), inside[:, None] & inside[None, :])
    assert "pt_wide" in caplog.text and str(expected) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="MambaDoseLib.spacing"):
        resample_patient_inplane(make_phantom((64, 64, 2), native, seed=5), 3.906)
    assert caplog.text == ""  # a small field fits: no warning


def test_bad_input_names_the_patient():
    p = make_phantom((16, 16, 2), (4.0, 4.0, 2.5), seed=1, patient_id="pt_bad")
    for spacing in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="pt_bad"):
            resample_patient_inplane(p, spacing)
    _, m = resample_patient_inplane(p, 3.906, size=20)
    with pytest.raises(ValueError, match="pt_bad"):
        resample_dose_back(np.zeros((16, 16, 2), np.float32), m)


@settings(max_examples=60, deadline=None)
@given(
    native=st.floats(2.5, 6.0),
    target=st.floats(2.0, 6.0),
    n=st.integers(2, 40),
    size=st.integers(2, 40),
    value=st.floats(0.0, 80.0),
)
def test_constant_dose_stays_constant_in_the_covered_region(native, target, n, size, value):
    p = make_phantom((n, n, 2), (native, native, 2.5), seed=0, with_dose=False)
    m = inplane_map_for(p, target, size)
    back = resample_dose_back(np.full(m.resampled_shape, value, np.float32), m)
    covered = m.native_covered()
    np.testing.assert_allclose(back[covered], value, rtol=1e-5, atol=1e-5)
    assert np.all(back[~covered] == 0.0)
    forward = resample_inplane(np.full((n, n, 2), value, np.float32), m)
    rows, cols = (m.native_index_of_resampled(a) for a in (0, 1))
    inside = ((rows > 1e-6) & (rows < n - 1 - 1e-6))[:, None] & ((cols > 1e-6) & (cols < n - 1 - 1e-6))[None]
    np.testing.assert_allclose(forward[inside], value, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- prediction


class _CtPlusMask(torch.nn.Module):
    """Per pixel: channel 0 + channel 1 (acts on each voxel alone, so resampling commutes)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1] + x[:, 1:2] + self.dummy


CHANNELS = ["ct", "possible_dose_mask"]


def test_predict_patient_resamples_in_and_back_to_the_native_grid():
    from MambaDoseLib.features import build_features

    p = make_phantom((40, 40, 6), (4.688, 4.688, 2.5), seed=7, with_dose=False)
    model = _CtPlusMask()
    card = {"channels": CHANNELS, "inplane_spacing_mm": 3.906}
    dose = inference.predict_patient(model, card, p, device="cpu")
    assert dose.shape == p.shape and dose.dtype == np.float32
    assert np.all(dose[~p.possible_dose_mask] == 0.0) and dose[p.possible_dose_mask].min() > 0
    # the same chain written out
    r, m = resample_patient_inplane(p, 3.906)
    on_grid = inference.predict_volume(model, build_features(r, CHANNELS), device="cpu")
    expected = resample_dose_back(on_grid, m, within=r.possible_dose_mask)
    expected[~p.possible_dose_mask] = 0.0
    np.testing.assert_array_equal(dose, expected)
    # without the key the patient is predicted on its own grid
    native = inference.predict_patient(model, {"channels": CHANNELS}, p, device="cpu")
    assert native.shape == p.shape and not np.array_equal(native, dose)


class _Constant(torch.nn.Module):
    """0.5 on the normalised scale (60 Gy) everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, 0:1], 0.5) + self.dummy


def test_predict_patient_after_resampling_gives_a_dose_to_every_possible_dose_voxel():
    """A lone possible-dose voxel vanishes from the resampled mask (linear >= 0.5); the dose coming
    back reads the model grid around it, so nothing there may be skipped or zeroed."""
    p = make_phantom((40, 40, 6), (2.0, 2.0, 2.5), seed=7, with_dose=False)
    lone = (4, 4, 3)  # between model-grid voxels: the resampled mask drops it
    p.possible_dose_mask[:] = False
    p.possible_dose_mask[12:30, 12:30, :] = True
    p.possible_dose_mask[lone] = True
    r, _ = resample_patient_inplane(p, 3.906)
    card = {"channels": CHANNELS, "inplane_spacing_mm": 3.906}
    dose = inference.predict_patient(_Constant(), card, p, device="cpu")
    assert dose[p.possible_dose_mask].min() > 59.0 and np.all(dose[~p.possible_dose_mask] == 0.0)
    # what skipping by the resampled mask would have done: no dose at the lone voxel
    skipped = inference.predict_patient(_Constant(), card, p, device="cpu", within=r.possible_dose_mask)
    assert skipped[lone] == 0.0


def test_predict_patient_on_the_cards_grid_does_not_resample(monkeypatch):
    import MambaDoseLib.spacing as spacing

    p = make_phantom((128, 128, 3), (3.906, 3.906, 2.5), seed=8, with_dose=False)
    model = _CtPlusMask()
    plain = inference.predict_patient(model, {"channels": CHANNELS}, p, device="cpu")

    def fail(*_a, **_k):
        raise AssertionError("resampled a patient already on the model's grid")

    monkeypatch.setattr(spacing, "resample_dose_back", fail)
    keyed = inference.predict_patient(
        model, {"channels": CHANNELS, "inplane_spacing_mm": 3.906}, p, device="cpu"
    )
    np.testing.assert_array_equal(keyed, plain)


# --------------------------------------------------------------------------- model card


def _tiny_model():
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2

    torch.manual_seed(0)
    return MambaUNetV2(MambaUNetConfig(in_channels=2, channels=(4, 8), mixer="none", mixer_min_level=1))


def test_card_key_round_trips_and_bad_values_are_refused(tmp_path):
    import json

    from MambaDoseLib.weights import card_path, load_model, save_model

    path = tmp_path / "m.safetensors"
    save_model(path, _tiny_model(), {"channels": CHANNELS, "inplane_spacing_mm": 3.906})
    _, card = load_model(path)
    assert inference.card_inplane_spacing(card) == 3.906
    assert inference.card_inplane_spacing({"channels": CHANNELS}) is None
    bad = json.loads(card_path(path).read_text())
    bad["inplane_spacing_mm"] = -1
    card_path(path).write_text(json.dumps(bad))
    with pytest.raises(WeightsError, match=r"m\.json: inplane_spacing_mm must be a positive number"):
        load_model(path)


def test_ensemble_card_carries_its_members_spacing(tmp_path):
    from MambaDoseLib.model import MambaUNetV2Ensemble
    from MambaDoseLib.weights import load_model, save_model

    member = _tiny_model()
    ensemble = MambaUNetV2Ensemble(member.config, 2)

    def card(*spacings):
        members = [{"file": f"m{i}", "config": {"inplane_spacing_mm": s}} for i, s in enumerate(spacings)]
        return {"channels": CHANNELS, "training": {"members": members}}

    saved = save_model(tmp_path / "e.safetensors", ensemble, card(3.906, 3.906))
    assert saved["inplane_spacing_mm"] == 3.906 and saved["ensemble_size"] == 2
    _, loaded = load_model(tmp_path / "e.safetensors")
    assert inference.card_inplane_spacing(loaded) == 3.906
    native = save_model(tmp_path / "n.safetensors", ensemble, card(None, None))
    assert "inplane_spacing_mm" not in native
    with pytest.raises(WeightsError, match="different in-plane grids"):
        save_model(tmp_path / "x.safetensors", ensemble, card(3.906, None))
    # a member's own card key (benchmarks/ship_ensemble.py records it) counts like its config
    keyed = {"channels": CHANNELS, "training": {"members": [{"inplane_spacing_mm": 3.906}, {"file": "m1"}]}}
    assert save_model(tmp_path / "k.safetensors", ensemble, keyed)["inplane_spacing_mm"] == 3.906
    keyed["training"]["members"][1]["inplane_spacing_mm"] = None
    with pytest.raises(WeightsError, match="different in-plane grids"):
        save_model(tmp_path / "x.safetensors", ensemble, keyed)
    with pytest.raises(WeightsError, match="members were trained with"):
        save_model(tmp_path / "y.safetensors", ensemble, {**card(3.906, 3.906), "inplane_spacing_mm": 3.5})
    # a refused card writes nothing, and never replaces earlier weights without their card
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
    with pytest.raises(WeightsError):
        save_model(tmp_path / "e.safetensors", MambaUNetV2Ensemble(member.config, 2), card(3.906, None))
    load_model(tmp_path / "e.safetensors")  # still the earlier file and its card


# --------------------------------------------------------------------------- real data


def test_real_patient_round_trip_and_field_of_view(openkbp_validation_dir):
    """pt_238 (4.883 mm) has 3 % of its possible-dose voxels beyond the 500 mm field of 3.906 mm;
    the round trip of its reference dose stays within a few tenths of a Gy elsewhere."""
    from MambaDoseLib.metrics import dose_score
    from MambaDoseLib.openkbp import read_patient

    p = read_patient(openkbp_validation_dir / "pt_238")
    r, m = resample_patient_inplane(p, 3.906)
    assert m.pdm_voxels_outside == 6802
    back = resample_dose_back(r.dose_gy, m, within=r.possible_dose_mask)
    back[~p.possible_dose_mask] = 0.0
    assert dose_score(back, p.dose_gy, p.possible_dose_mask) < 0.2
