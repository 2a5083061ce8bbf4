"""A two-stage cascade: the first-stage dose as ``Patient.prior_dose_gy``, kept in the cache, the
``prior_dose`` feature channel (and its neighbours), ``--channels`` lists with presets, and
benchmarks/cascade_priors.py writing a cache of patients with their first-stage dose (CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from MambaDoseLib import cli, inference
from MambaDoseLib import features as F
from MambaDoseLib.errors import InputError
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.phantom import make_phantom
from MambaDoseLib.weights import load_model, save_model
from MambaDoseTrainingLib import cache as C
from MambaDoseTrainingLib.augment import AugmentConfig
from MambaDoseTrainingLib.dataset import channels_for_preset, resolve_channels
from MambaDoseTrainingLib.train import MODEL_BEST, TrainConfig, run_training

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHAPE = (32, 32, 16)
TOL_GY = 0.005 + 1e-5  # the cache's dose step / 2, plus float32 rounding


def _phantom(seed: int, pid: str | None = None, prior: bool = True, shape=SHAPE):
    """A small phantom; with ``prior`` a first-stage dose that differs from the reference dose
    (values on and just below the cache's rounding boundaries, and some outside the mask)."""
    p = make_phantom(shape, seed=seed, patient_id=pid or f"pt_{seed}")
    if prior:
        rng = np.random.default_rng(seed)
        p.prior_dose_gy = (0.9 * p.dose_gy + rng.uniform(0.0, 3.0, shape)).astype(np.float32)
        p.prior_dose_gy.flat[::7] = 12.344999  # rounds down to 12.34
        p.prior_dose_gy.flat[::11] = 70.005  # a rounding boundary
    return p


def _index(cache_dir: Path) -> dict:
    return json.loads((cache_dir / C.INDEX_FILE).read_text())


# --------------------------------------------------------------------------- cache


def test_prior_round_trip_within_half_a_step_and_none_when_absent():
    ref = _phantom(3)
    back = C.decode_patient(C.encode_patient(ref), "pt_3")
    assert back.prior_dose_gy.dtype == np.float32 and back.prior_dose_gy.shape == SHAPE
    assert np.abs(back.prior_dose_gy - ref.prior_dose_gy).max() <= TOL_GY
    assert np.abs(back.dose_gy - ref.dose_gy).max() <= TOL_GY  # the dose is still the reference's
    assert not np.array_equal(back.prior_dose_gy, back.dose_gy)  # kept apart from the dose
    ref.dose_gy = None  # a prior without a reference dose (a patient to predict)
    back = C.decode_patient(C.encode_patient(ref), "pt_3")
    assert back.dose_gy is None and np.abs(back.prior_dose_gy - ref.prior_dose_gy).max() <= TOL_GY
    plain = _phantom(3, prior=False)
    assert C.decode_patient(C.encode_patient(plain), "pt_3").prior_dose_gy is None
    with pytest.raises(ValueError, match="655"):  # the dose's range applies to the prior too
        C.encode_patient(dataclasses.replace(plain, prior_dose_gy=plain.dose_gy + 700.0))
    with pytest.raises(ValueError, match="below the cache's range"):  # no silent wrap to 655 Gy
        C.encode_patient(dataclasses.replace(plain, prior_dose_gy=plain.dose_gy - 0.01))
    assert C.quantise_dose(np.array([-0.004, 0.0])).tolist() == [0, 0]  # rounds to 0 centi-Gy: kept


def test_encode_preset_changes_the_stream_not_the_values():
    ref = _phantom(4)
    fast, small = C.encode_patient(ref, preset=0), C.encode_patient(ref, preset=9)
    assert fast != small  # the preset reaches the compressor
    assert fast == C.encode_patient(ref, 0) and small == C.encode_patient(ref)  # 9 by default
    a, b = C.decode_patient(fast, "x"), C.decode_patient(small, "x")
    for name in ("ct", "dose_gy", "prior_dose_gy", "possible_dose_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_write_patients_order_index_flag_and_preset(tmp_path, monkeypatch):
    presets = []
    encode = C.encode_patient
    monkeypatch.setattr(C, "encode_patient", lambda p, preset=9: presets.append(preset) or encode(p, preset))
    patients = [_phantom(2), _phantom(1, prior=False), _phantom(10)]  # pt_10 last: the order given
    out = C.write_patients(iter(patients), tmp_path / "c", ["src_a", "src_b"])
    assert out == {"cache_dir": str(tmp_path / "c"), "patients": 3}
    assert presets == [1, 1, 1]  # write_patients' default: fast
    assert C.list_cached(tmp_path / "c") == ["pt_2", "pt_1", "pt_10"]
    index = _index(tmp_path / "c")
    assert index["source"] == ["src_a", "src_b"] and index["quantisation"] == C.QUANTISATION
    assert [e.get("has_prior_dose") for e in index["patients"]] == [True, None, True]
    assert index["patients"][0]["file"] == "pt_2.npz.xz" and index["patients"][0]["shape"] == list(SHAPE)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "index.json",
        "pt_1.npz.xz",
        "pt_10.npz.xz",
        "pt_2.npz.xz",
    ]
    for ref, back in zip(patients, C.load_all(tmp_path / "c"), strict=True):
        assert back.patient_id == ref.patient_id
        np.testing.assert_array_equal(back.possible_dose_mask, ref.possible_dose_mask)
        assert np.abs(back.dose_gy - ref.dose_gy).max() <= TOL_GY
        if ref.prior_dose_gy is None:
            assert back.prior_dose_gy is None
        else:
            assert np.abs(back.prior_dose_gy - ref.prior_dose_gy).max() <= TOL_GY
    C.write_patients(patients[:1], tmp_path / "p9", "s", preset=9)
    assert presets[-1] == 9
    assert (
        np.abs(C.load_patient(tmp_path / "p9", "pt_2").prior_dose_gy - patients[0].prior_dose_gy).max()
        <= TOL_GY
    )
    # combining such caches keeps the entries' flag (the cascade's training cache is combined)
    C.combine_caches([(tmp_path / "p9", None), (tmp_path / "c", ["pt_1"])], tmp_path / "both")
    assert [e.get("has_prior_dose") for e in _index(tmp_path / "both")["patients"]] == [True, None]


def test_write_patients_refusals(tmp_path):
    C.write_patients([_phantom(1)], tmp_path / "c", "s")
    before = (tmp_path / "c" / "pt_1.npz.xz").read_bytes()
    with pytest.raises(InputError, match="index.json: already exists"):
        C.write_patients([_phantom(2)], tmp_path / "c", "s")
    assert C.list_cached(tmp_path / "c") == ["pt_1"] and not (tmp_path / "c" / "pt_2.npz.xz").exists()
    assert (tmp_path / "c" / "pt_1.npz.xz").read_bytes() == before
    with pytest.raises(InputError, match="patient pt_1 given twice"):
        C.write_patients([_phantom(1), _phantom(2), _phantom(1, prior=False)], tmp_path / "d", "s")
    assert not (tmp_path / "d" / C.INDEX_FILE).exists()  # no index: not a cache
    C.write_patients([_phantom(2)], tmp_path / "d", "s")  # the interrupted folder can be written
    assert C.list_cached(tmp_path / "d") == ["pt_2"]


# --------------------------------------------------------------------------- features


def test_prior_dose_channel_is_the_normalised_prior_inside_the_mask():
    p = _phantom(5)
    p.prior_dose_gy[:] = np.linspace(-5.0, 100.0, p.prior_dose_gy.size, dtype=np.float32).reshape(SHAPE)
    prior_before = p.prior_dose_gy.copy()
    x = F.build_features(p, ("ct", F.PRIOR_DOSE))
    assert F.PRIOR_DOSE == "prior_dose" and x.dtype == np.float32
    inside = p.possible_dose_mask
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(x[1][~inside], -1.0)  # 0 Gy outside the mask, whatever the prior
    expected = np.clip(p.prior_dose_gy, 0.0, 80.0) / 40.0 - 1.0
    np.testing.assert_allclose(x[1][inside], expected[inside], atol=1e-6)
    assert x[1][inside].min() == -1.0 and x[1][inside].max() == 1.0  # clipped as the dose is
    np.testing.assert_array_equal(x[0], F.normalise_ct(p.ct))
    np.testing.assert_array_equal(p.prior_dose_gy, prior_before)  # the patient is left as it was
    # the prior, not the reference dose: a patient whose dose differs gets the same channel
    p.dose_gy = None
    np.testing.assert_array_equal(F.build_features(p, (F.PRIOR_DOSE,))[0], x[1])


def test_prior_dose_neighbours_are_shifted_slices():
    p = _phantom(6)
    names = ("prior_dose_prev", F.PRIOR_DOSE, "prior_dose_next", "prior_dose_next2", "prior_dose_prev3")
    F.check_channels(names)
    x = F.build_features(p, names)
    centre, k = x[1], SHAPE[2]
    assert np.ptp(centre, axis=(0, 1)).any()  # slices differ, so a wrong shift shows
    for j in range(k):
        for c, offset in ((0, -1), (2, 1), (3, 2), (4, -3)):
            np.testing.assert_array_equal(x[c][..., j], centre[..., min(max(j + offset, 0), k - 1)])
    np.testing.assert_array_equal(x[3], F.shift_slices(centre, 2))


@pytest.mark.parametrize("name", ["prior", "prior_dose_next1", "prior_doses", "prior_dose_prev0"])
def test_misspelt_prior_channels_are_unknown(name):
    with pytest.raises(ValueError, match="unknown feature channel"):
        F.check_channels(["ct", name])


def test_prior_channel_without_prior_names_the_patient():
    p = _phantom(7, "pt_77", prior=False)
    for names in ((F.PRIOR_DOSE,), ("ct", "prior_dose_next")):
        with pytest.raises(InputError, match=r"patient pt_77: channel 'prior_dose' needs a first-stage dose"):
            F.build_features(p, names)
    F.build_features(p, ("ct", "ptv_map"))  # other channels need no prior


def test_inplane_resampling_keeps_the_prior_as_the_dose():
    from MambaDoseLib.spacing import resample_patient_inplane

    p = make_phantom((40, 40, 6), spacing_mm=(3.0, 3.0, 2.5), seed=8, patient_id="pt_8")
    p.prior_dose_gy = p.dose_gy.copy()
    moved, inplane = resample_patient_inplane(p, 3.906)
    assert not inplane.is_identity and moved.prior_dose_gy is not None
    np.testing.assert_array_equal(moved.prior_dose_gy, moved.dose_gy)  # resampled as the dose is
    p.prior_dose_gy = None
    assert resample_patient_inplane(p, 3.906)[0].prior_dose_gy is None


# --------------------------------------------------------------------------- --channels


def test_resolve_channels_expands_presets_inside_a_list():
    two_d, two_half = channels_for_preset("2d"), channels_for_preset("2.5d")
    assert resolve_channels("2d") == two_d and resolve_channels("2.5d") == two_half
    assert resolve_channels("2d,prior_dose") == (*two_d, "prior_dose")
    assert resolve_channels(" prior_dose_prev , 2.5d,prior_dose_next2 ") == (
        "prior_dose_prev",
        *two_half,
        "prior_dose_next2",
    )
    assert resolve_channels("ct,prior_dose,") == ("ct", "prior_dose")  # an empty item is skipped
    assert TrainConfig(channels="2d,prior_dose_prev,prior_dose").channel_names() == (
        *two_d,
        "prior_dose_prev",
        "prior_dose",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2d,ct", "channel 'ct' given twice"),
        ("2d,2d", "given twice"),
        ("prior_dose,2d,prior_dose", "channel 'prior_dose' given twice"),
        ("2.5d,ct_next", "channel 'ct_next' given twice"),
        ("2d,prior", "unknown feature channel 'prior'"),
        ("3d", "unknown feature channel '3d'"),
        ("2d,prior_dose_next1", "unknown feature channel 'prior_dose_next1'"),
        ("", "no channel names"),
        (" , ,", "no channel names"),
    ],
)
def test_resolve_channels_refusals_name_the_option(text, message):
    with pytest.raises(InputError, match=f"--channels {text!r}: .*{message}"):
        resolve_channels(text)
    with pytest.raises(InputError, match="--channels"):
        TrainConfig(channels=text).channel_names()


def _train_argv(train, val, out, channels, features):
    return [
        "train", "--train-cache", str(train), "--val-cache", str(val), "--out", str(out),
        "--channels", channels, "--mixer", "none", "--model-channels", "8,16,32,64", "--batch-size", "8",
        "--epochs", "1", "--slices-per-epoch", "8", "--workers", "0", "--no-progress",
        "--device", "cpu", "--feature-cache", str(features),
    ]  # fmt: skip


def test_cli_train_with_prior_channel_on_a_cache_without_priors_fails_clearly(tmp_path, capsys):
    C.write_patients([_phantom(1, prior=False)], tmp_path / "plain", "s")
    C.write_patients([_phantom(201)], tmp_path / "val", "s")
    rc = cli.main(
        _train_argv(tmp_path / "plain", tmp_path / "val", tmp_path / "run", "2d,prior_dose", tmp_path / "f")
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "pt_1" in err and "'prior_dose' needs a first-stage dose" in err and "Traceback" not in err
    assert not (tmp_path / "run" / MODEL_BEST).exists()
    rc = cli.main(
        _train_argv(tmp_path / "val", tmp_path / "val", tmp_path / "r2", "2d,prior", tmp_path / "f")
    )
    assert rc == 2 and "--channels '2d,prior': unknown feature channel 'prior'" in capsys.readouterr().err


def test_second_stage_trains_on_priors_and_predicts_with_them(tmp_path):
    train = [_phantom(s) for s in (1, 2)]
    val = [_phantom(201)]
    channels = "2d,prior_dose_prev,prior_dose,prior_dose_next"
    cfg = TrainConfig(
        out=str(tmp_path / "run"), channels=channels, mixer="none", model_channels=[8, 16, 32, 64],
        batch_size=8, epochs=1, warmup_epochs=0, workers=0, progress=False, slices_per_epoch=8,
        augment=AugmentConfig(rotate_p=0.0, scale_p=0.0, shift_p=0.0),
    )  # fmt: skip
    summary = run_training(cfg, train, val)
    assert np.isfinite(summary["history"][-1]["train_loss"])
    model, card = load_model(tmp_path / "run" / MODEL_BEST)
    assert card["channels"] == [
        *channels_for_preset("2d"),
        "prior_dose_prev",
        "prior_dose",
        "prior_dose_next",
    ]
    dose = inference.predict_patient(model, card, val[0], device="cpu")
    assert dose.shape == SHAPE and np.isfinite(dose).all()
    changed = _phantom(201)
    changed.prior_dose_gy = changed.prior_dose_gy + 10.0
    assert not np.array_equal(inference.predict_patient(model, card, changed, device="cpu"), dose)
    with pytest.raises(InputError, match="pt_201"):
        inference.predict_patient(model, card, _phantom(201, prior=False), device="cpu")


def test_second_stage_model_on_another_inplane_grid_resamples_the_prior():
    """A model with ``inplane_spacing_mm`` predicts a patient of another voxel size on its grid:
    the prior goes with the patient (it used to be dropped there)."""
    channels = ["ct", "ptv_map", "possible_dose_mask", "prior_dose"]
    torch.manual_seed(0)
    model = MambaUNetV2(MambaUNetConfig(in_channels=4, channels=(4, 8), mixer="none", mixer_min_level=1))
    card = {"channels": channels, "inplane_spacing_mm": 3.906}
    p = make_phantom((40, 40, 6), spacing_mm=(3.0, 3.0, 2.5), seed=8, patient_id="pt_8")
    p.prior_dose_gy = p.dose_gy.copy()
    dose = inference.predict_patient(model.eval(), card, p, device="cpu")
    assert dose.shape == p.shape and np.isfinite(dose).all()


# --------------------------------------------------------------------------- cascade_priors.py


@pytest.fixture(scope="module")
def cascade():
    sys.path.insert(0, str(BENCH))  # the script imports its neighbour ensemble_eval
    try:
        yield load_script(BENCH / "cascade_priors.py")
    finally:
        sys.path.remove(str(BENCH))


def _model_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    save_model(path, MambaUNetV2(cfg).eval(), {"channels": ["ct", "ptv_map", "possible_dose_mask"]})
    return path


def _store_files(store: Path) -> dict[str, int]:
    return {str(f.relative_to(store)): f.stat().st_mtime_ns for f in sorted(store.rglob("*.npy"))}


def test_parse_part(cascade, tmp_path):
    assert cascade.parse_part("c=a.safetensors+b.safetensors") == (
        Path("c"),
        [Path("a.safetensors"), Path("b.safetensors")],
    )
    for bad in ("c", "=a", "c=", "c=+"):
        with pytest.raises(SystemExit, match="expected CACHE=MODEL"):
            cascade.parse_part(bad)


def test_cascade_priors_end_to_end(cascade, tmp_path, monkeypatch, capsys):
    C.write_patients([_phantom(1, prior=False), _phantom(2, prior=False)], tmp_path / "c1", "s")
    C.write_patients([_phantom(3, prior=False)], tmp_path / "c2", "s")
    a, b = _model_file(tmp_path / "a.safetensors", 0), _model_file(tmp_path / "b.safetensors", 1)
    store = tmp_path / "store"
    common = ["--device", "cpu", "--backend", "torch", "--store", str(store)]
    parts = ["--part", f"{tmp_path / 'c1'}={a}+{b}", "--part", f"{tmp_path / 'c2'}={a}"]
    assert cascade.main([str(tmp_path / "out"), *parts, *common]) == 0
    assert "3 patients with a first-stage dose" in capsys.readouterr().out

    # the priors are the mean of each part's models' predictions of the cached patients
    models = {m: load_model(m, backend="torch") for m in (a, b)}
    expected = {}
    for cache_dir, pid, names in (("c1", "pt_1", (a, b)), ("c1", "pt_2", (a, b)), ("c2", "pt_3", (a,))):
        patient = C.load_patient(tmp_path / cache_dir, pid)
        preds = [inference.predict_patient(*models[m], patient, device="cpu") for m in names]
        expected[pid] = np.mean(preds, axis=0)
        back = C.load_patient(tmp_path / "out", pid)
        assert np.abs(back.prior_dose_gy - expected[pid]).max() <= TOL_GY, pid
        assert np.abs(back.dose_gy - patient.dose_gy).max() <= TOL_GY  # the reference dose kept
        np.testing.assert_array_equal(back.ct, patient.ct)
        np.testing.assert_array_equal(back.possible_dose_mask, patient.possible_dose_mask)
    assert np.abs(expected["pt_1"]).max() > 0.1  # a prior worth comparing
    pa = inference.predict_patient(*models[a], C.load_patient(tmp_path / "c1", "pt_1"), device="cpu")
    assert np.abs(expected["pt_1"] - pa).max() > 0.02  # b's prediction counts too
    index = _index(tmp_path / "out")
    assert [e["id"] for e in index["patients"]] == ["pt_1", "pt_2", "pt_3"]
    assert all(e["has_prior_dose"] for e in index["patients"])
    assert len(index["source"]) == 2 and str((tmp_path / "c1").resolve()) in index["source"][0]

    # the store: one folder per model, keyed as ensemble_eval.py keys it, one .npy per patient
    store_folder = load_script(BENCH / "ensemble_eval.py").store_folder
    folder_a, folder_b = (store_folder(store, models[m][1], ("axial",)) for m in (a, b))
    assert sorted(f.name for f in folder_a.iterdir()) == ["pt_1.npy", "pt_2.npy", "pt_3.npy"]
    assert sorted(f.name for f in folder_b.iterdir()) == ["pt_1.npy", "pt_2.npy"]
    np.testing.assert_array_equal(np.load(folder_a / "pt_1.npy"), pa)
    stored = _store_files(store)

    # a second call predicts nothing again: the store is reused, not rewritten
    def refuse(*args, **kwargs):
        raise AssertionError("predicted again")

    monkeypatch.setattr(inference, "predict_patient", refuse)
    assert cascade.main([str(tmp_path / "out2"), *parts, *common]) == 0
    assert _store_files(store) == stored
    for pid in expected:
        np.testing.assert_array_equal(
            C.load_patient(tmp_path / "out2", pid).prior_dose_gy,
            C.load_patient(tmp_path / "out", pid).prior_dose_gy,
        )

    # an existing OUT_CACHE is refused before anything is predicted or written
    capsys.readouterr()
    written = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "out").iterdir()}
    fresh = tmp_path / "fresh_store"
    assert cascade.main([str(tmp_path / "out"), *parts, "--device", "cpu", "--store", str(fresh)]) == 2
    assert "index.json: already exists" in capsys.readouterr().err
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "out").iterdir()} == written
    assert not fresh.exists()  # write_patients refused before the first model was loaded

    # a part whose cache does not exist: exit code 2 naming it, no index written
    missing = ["--part", f"{tmp_path / 'nope'}={a}"]
    assert cascade.main([str(tmp_path / "out3"), *missing, *common]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "out3" / C.INDEX_FILE).exists()
    assert os.path.exists(tmp_path / "out" / C.INDEX_FILE)


def test_second_stage_predictions_are_stored_per_first_stage_dose(cascade, tmp_path):
    """A model that reads prior_dose predicts the same patient differently for another first-stage
    dose: its stored predictions are keyed by that dose (folder prior-<digest>), never reused for
    another one; the same dose again reuses them."""
    torch.manual_seed(3)
    cfg = MambaUNetConfig(
        in_channels=2, channels=(8, 16, 16, 32), mixer="none", residual_channel=1
    )  # fmt: skip
    second = tmp_path / "second.safetensors"
    model = MambaUNetV2(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a correction that depends on the input
    save_model(second, model, {"channels": ["possible_dose_mask", "prior_dose"]})
    low, high = _phantom(1), _phantom(1)
    high.prior_dose_gy = high.prior_dose_gy + 5.0
    C.write_patients([low], tmp_path / "low", "s")
    C.write_patients([high], tmp_path / "high", "s")
    store = tmp_path / "store"
    common = ["--device", "cpu", "--backend", "torch", "--store", str(store)]
    for name in ("low", "high", "low"):
        out = tmp_path / f"out_{name}_{len(list(tmp_path.glob('out_*')))}"
        assert cascade.main([str(out), "--part", f"{tmp_path / name}={second}", *common]) == 0
    got = {f.parent.name for f in store.rglob("pt_1.npy")}
    assert len(got) == 2 and all(name.startswith("prior-") for name in got)  # two doses, two entries
    first, again = (C.load_patient(tmp_path / f"out_low_{i}", "pt_1").prior_dose_gy for i in (0, 2))
    other = C.load_patient(tmp_path / "out_high_1", "pt_1").prior_dose_gy
    np.testing.assert_array_equal(first, again)
    assert np.abs(other - first).max() > 1.0  # not the low dose's prediction reused
    stored = cascade.stored_prediction
    card = {"channels": ["ct"]}  # a first stage: one entry per patient, whatever it carries
    assert stored(tmp_path, card, low) == stored(tmp_path, card, high) == tmp_path / "pt_1.npy"
    with pytest.raises(InputError, match="pt_1"):
        stored(tmp_path, {"channels": ["prior_dose_next"]}, _phantom(1, prior=False))
