"""``mambadose predict`` / ``demo`` end to end on the phantom, and every bad input of issue 5.

A tiny randomly initialised model (saved with ``weights.save_model``) stands in for the trained
weights: these tests check the plumbing (geometry, files, messages), not the dose's quality.
The two-resolution runs replace the network by an oracle that computes a dose from the
structures it receives on the model grid, so that comparing them measures the geometry chain
(resampling in, model grid, resampling out) and not a random network's quirks.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from MambaDoseLib import RESEARCH_DISCLAIMER, cli, rois
from MambaDoseLib.commands.demo import demo_folder_is_replaceable, write_phantom_inputs
from MambaDoseLib.errors import InputError
from MambaDoseLib.features import CHANNELS, CT_RANGE, DOSE_RANGE_GY
from MambaDoseLib.geometry import Volume, resample_to
from MambaDoseLib.metrics import ROI_METRIC_NAMES, roi_metrics
from MambaDoseLib.predict import OUTPUT_FILES, load_ct, load_structures, predict_dose

#: a short phantom (40 slices of 2.5 mm around the targets) keeps each run to a few seconds
PHANTOM_SHAPE = (128, 128, 40)
COMMANDS = {"predict": "MambaDoseLib.commands.predict", "demo": "MambaDoseLib.commands.demo"}


def mambadose(*argv) -> int:
    return cli.main([str(a) for a in argv], commands=COMMANDS)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from MambaDoseLib import weights
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2

    torch.manual_seed(0)
    config = MambaUNetConfig(in_channels=len(CHANNELS), channels=(8, 16), mixer="none", mixer_min_level=1)
    model = MambaUNetV2(config)
    card = {
        "config": config.to_dict(),
        "channels": list(CHANNELS),
        "normalisation": {"ct_range": list(CT_RANGE), "dose_range_gy": list(DOSE_RANGE_GY)},
        "training": {"note": "random initialisation for tests"},
    }
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    weights.save_model(path, model, card)
    return path


def oracle_dose(model, card, patient, **kwargs) -> np.ndarray:
    """Stand-in for ``inference.predict_patient``: max over PTVs of Rx * exp(-d / 10 mm), d = the
    distance (mm) outside the PTV on the model grid; 0 outside the possible-dose mask."""
    from scipy import ndimage

    dose = np.zeros(patient.shape, np.float32)
    for roi, gy in rois.PRESCRIPTION_GY.items():
        if roi in patient.structures:
            d = ndimage.distance_transform_edt(~patient.structures[roi], sampling=patient.spacing_mm)
            np.maximum(dose, gy * np.exp(-d / 10.0), out=dose)
    dose[~patient.possible_dose_mask] = 0
    return dose


ORACLE_TARGET = "MambaDoseLib.inference.predict_patient"


@pytest.fixture(scope="module")
def phantom_native(tmp_path_factory):
    """The phantom written at its own spacing (3.906 x 3.906 x 2.5 mm)."""
    return write_phantom_inputs(tmp_path_factory.mktemp("native"), shape=PHANTOM_SHAPE)


@pytest.fixture(scope="module")
def run_native(phantom_native, model_path, tmp_path_factory):
    ct, structures = phantom_native
    out = tmp_path_factory.mktemp("out") / "result"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ORACLE_TARGET, oracle_dose)
        rc = mambadose(
            "predict",
            "--ct",
            ct,
            "--structures",
            structures,
            "--out",
            out,
            "--model",
            model_path,
            "--device",
            "cpu",
        )
    return rc, out


def _check_outputs(out, ct_path, structures_dir):
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    # the dose has the CT's geometry
    ct = sitk.ReadImage(str(ct_path))
    dose_image = sitk.ReadImage(str(out / "dose.nii.gz"))
    assert dose_image.GetSize() == ct.GetSize()
    np.testing.assert_allclose(dose_image.GetSpacing(), ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(dose_image.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(dose_image.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert "research" in nib.load(out / "dose.nii.gz").header["descrip"].tobytes().decode()
    dose = Volume.from_sitk(dose_image)
    assert dose.array.dtype == np.float32 and dose.array.min() >= 0 and dose.array.max() > 0
    # zero far outside the body (air)
    ct_hu = sitk.GetArrayFromImage(ct)
    assert np.all(dose.array[ct_hu < -1000 + 1] == 0) or (dose.array[ct_hu < -1000 + 1] == 0).mean() > 0.9
    # the CSV agrees with the evaluation module on the same arrays
    assert (out / "dvh_metrics.csv").read_text().startswith("# " + RESEARCH_DISCLAIMER)
    table = pd.read_csv(out / "dvh_metrics.csv", comment="#").set_index("structure")
    masks = load_structures(structures_dir)
    summary = json.loads((out / "summary.json").read_text())
    rx = summary["structures"]["prescriptions_gy"]
    assert set(table.index) == set(summary["structures"]["used"])
    for name in table.index:
        mask = resample_to(masks[name], dose, "mask").array
        expected = roi_metrics(dose.array, mask, dose.voxel_volume_mm3, rx.get(name))
        for metric in ROI_METRIC_NAMES:
            value = table.loc[name, metric]
            if math.isnan(expected[metric]):
                assert math.isnan(value), (name, metric)
            else:
                assert value == pytest.approx(expected[metric], abs=1e-4), (name, metric)
    assert summary["disclaimer"] == RESEARCH_DISCLAIMER
    assert summary["device"].startswith("cpu")
    assert {"inference", "total"} <= set(summary["timings_s"])
    assert "channels" in summary["model"]["card"] and "tensors" not in summary["model"]["card"]
    for png in ("dvh.png", "isodose_axial.png", "isodose_coronal.png", "isodose_sagittal.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    return dose, summary


def test_predict_native_resolution(run_native, phantom_native, capsys):
    rc, out = run_native
    assert rc == 0
    _, summary = _check_outputs(out, *phantom_native)
    # the phantom's PTV_<Gy> names are matched with their prescriptions
    assert summary["structures"]["prescriptions_gy"] == {
        f"PTV_{gy:g}": gy for gy in rois.PRESCRIPTION_GY.values()
    }
    assert summary["structures"]["unmatched"] == {}


def test_predict_second_resolution_agrees_in_physical_space(
    run_native, phantom_native, model_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(ORACLE_TARGET, oracle_dose)
    ct, structures = write_phantom_inputs(tmp_path / "fine", shape=PHANTOM_SHAPE, spacing_mm=(2.0, 2.0, 2.0))
    out = tmp_path / "result"
    rc = mambadose(
        "predict",
        "--ct",
        ct,
        "--structures",
        structures,
        "--out",
        out,
        "--model",
        model_path,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert rc == 0
    fine, _ = _check_outputs(out, ct, structures)
    native = Volume.from_sitk(sitk.ReadImage(str(run_native[1] / "dose.nii.gz")))
    on_fine = resample_to(native, fine, "linear")
    body = sitk.GetArrayFromImage(sitk.ReadImage(str(ct))) > -500
    diff = np.abs(on_fine.array - fine.array)[body]
    assert fine.array.max() > 60
    assert diff.mean() < 0.6  # Gy; measured 0.2-0.4 Gy (steep 10 mm fall-off, voxelised PTVs)
    # the 95 % region of the 70 Gy target sits at the same physical place (centre within 1 mm)
    centres = [_centre_mm(v, v.array >= 0.95 * 70) for v in (on_fine, fine)]
    np.testing.assert_allclose(centres[0], centres[1], atol=1.0)


def _centre_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return (volume.grid.index_to_physical() @ np.r_[kji[::-1], 1.0])[:3]


def test_api_warnings_off_grid_unmatched_empty(phantom_native, model_path):
    """Structures on another grid are resampled (warning); unknown names and empty masks are ignored."""
    ct_path, structures_dir = phantom_native
    ct = load_ct(ct_path)
    structures = load_structures(structures_dir)
    ptv = "PTV_70"
    coarse = resample_to(structures[ptv], _shifted_grid(structures[ptv]), "mask")
    structures[ptv] = coarse
    structures["BODY"] = structures["Mandible"].with_array(np.ones_like(structures["Mandible"].array))
    structures["Larynx"] = structures["Larynx"].with_array(np.zeros_like(structures["Larynx"].array))
    done = []
    result = predict_dose(
        ct, structures, model_path=model_path, device="cpu", progress=lambda d, t: done.append((d, t))
    )
    text = "\n".join(result.warnings)
    assert f"{ptv!r} is on a different grid" in text
    assert "'Larynx' is empty" in text
    assert "BODY" in result.unmatched and "BODY" not in result.roi_map
    assert "Larynx" not in result.roi_map
    assert result.roi_map[ptv] == "PTV70"
    assert done[-1][0] == done[-1][1] == PHANTOM_SHAPE[2]
    assert result.dose.grid.same_as(ct.grid)
    # cancelling stops the prediction with the inference module's error
    from MambaDoseLib.inference import PredictionCancelled

    with pytest.raises(PredictionCancelled):
        predict_dose(ct, structures, model_path=model_path, device="cpu", cancel=lambda: True)


def _shifted_grid(volume: Volume):
    from MambaDoseLib.geometry import Grid

    g = volume.grid
    return Grid(tuple(n // 2 + 2 for n in g.size), tuple(2 * s for s in g.spacing), g.origin, g.direction)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _refused(capsys, *argv, match: str) -> str:
    rc = mambadose(*argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("mambadose ") and "error:" in last
    assert match in last, last
    return last


def _predict_args(ct, structures, out, model_path):
    return (
        "predict",
        "--ct",
        ct,
        "--structures",
        structures,
        "--out",
        out,
        "--model",
        model_path,
        "--device",
        "cpu",
    )


def _write(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_bad_ct(tmp_path, phantom_native, model_path, capsys):
    _, structures = phantom_native
    out = tmp_path / "out"
    args = lambda ct: _predict_args(ct, structures, out, model_path)  # noqa: E731
    _refused(capsys, *args(tmp_path / "missing.nii.gz"), match="CT not found")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    _refused(capsys, *args(garbage), match="cannot read the CT")
    flat = _write(tmp_path / "flat.nii.gz", np.zeros((20, 20), np.int16), spacing=(1.0, 1.0))
    _refused(capsys, *args(flat), match="2D")
    one_slice = _write(tmp_path / "one.nii.gz", np.zeros((1, 20, 20), np.int16))
    _refused(capsys, *args(one_slice), match="2D")
    nan = np.zeros((4, 20, 20), np.float32)
    nan[2, 3, 4] = np.nan
    _refused(capsys, *args(_write(tmp_path / "nan.nii.gz", nan)), match="NaN")  # ITK's reader hides it
    _refused(capsys, *args(_write(tmp_path / "nan.nrrd", nan)), match="NaN")
    ok = np.full((4, 20, 20), -1000, np.int16)
    _refused(
        capsys, *args(_write(tmp_path / "tiny.nii.gz", ok, (0.05, 0.05, 1.0))), match="absurd voxel size"
    )
    _refused(capsys, *args(_write(tmp_path / "huge.nii.gz", ok, (1.0, 1.0, 25.0))), match="absurd voxel size")
    assert not out.exists()


def test_bad_structures(tmp_path, phantom_native, model_path, capsys):
    ct, structures = phantom_native
    out = tmp_path / "out"
    ref = sitk.ReadImage(str(ct))
    # not overlapping the CT at all
    far = tmp_path / "far"
    far.mkdir()
    for name in ("PTV_70", "Cord"):
        image = sitk.Image(ref.GetSize(), sitk.sitkUInt8) + 1
        image.CopyInformation(ref)
        image.SetOrigin([o + 5000.0 for o in ref.GetOrigin()])
        sitk.WriteImage(image, str(far / f"{name}.nii.gz"))
    _refused(capsys, *_predict_args(ct, far, out, model_path), match="does not overlap the CT")
    # no PTV
    no_ptv = tmp_path / "no_ptv"
    no_ptv.mkdir()
    for file in structures.iterdir():
        if not file.name.startswith("PTV"):
            (no_ptv / file.name).write_bytes(file.read_bytes())
    _refused(capsys, *_predict_args(ct, no_ptv, out, model_path), match="no target")
    # the only PTV is empty
    empty = tmp_path / "empty"
    empty.mkdir()
    image = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    image.CopyInformation(ref)
    sitk.WriteImage(image, str(empty / "PTV_70.nii.gz"))
    _refused(capsys, *_predict_args(ct, empty, out, model_path), match="every PTV mask is empty")
    # an empty folder, a missing folder
    (tmp_path / "none").mkdir()
    _refused(capsys, *_predict_args(ct, tmp_path / "none", out, model_path), match="no mask files")
    _refused(capsys, *_predict_args(ct, tmp_path / "nowhere", out, model_path), match="structures not found")
    # malformed --rx, --rx naming no structure
    _refused(
        capsys, *_predict_args(ct, structures, out, model_path), "--rx", "PTV70", match="expected NAME=GY"
    )
    _refused(
        capsys, *_predict_args(ct, structures, out, model_path), "--rx", "GTV=70", match="no structure named"
    )
    assert not out.exists()


def test_existing_results_are_refused_and_kept(run_native, phantom_native, model_path, capsys):
    ct, structures = phantom_native
    out = run_native[1]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _refused(capsys, *_predict_args(ct, structures, out, model_path), match="already holds results")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_weights_that_do_not_match_the_card(tmp_path, phantom_native, model_path, capsys):
    ct, structures = phantom_native
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model_path.read_bytes())
    card = json.loads(model_path.with_suffix(".json").read_text())
    card["config"]["channels"] = [16, 32]
    bad.with_suffix(".json").write_text(json.dumps(card))
    _refused(capsys, *_predict_args(ct, structures, tmp_path / "out", bad), match=str(bad.name))
    _refused(
        capsys,
        *_predict_args(ct, structures, tmp_path / "out", tmp_path / "none.safetensors"),
        match="not found",
    )
    assert not (tmp_path / "out").exists()


def test_demo_without_weights_fails_clearly(tmp_path, monkeypatch, capsys):
    from MambaDoseLib import weights

    monkeypatch.setattr(weights, "default_model_path", lambda: tmp_path / "Models" / "missing.safetensors")
    _refused(capsys, "demo", "--out", tmp_path / "demo", match="model weights not found")
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_foreign_folder(tmp_path, model_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _refused(capsys, "demo", "--out", out, "--model", model_path, match="not an earlier demo")
    assert (out / "notes.txt").read_text() == "keep me"


def test_label_map_with_table(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 1:3, 1:3] = 1
    labels[2, 2:4, 3:5] = 2
    path = _write(tmp_path / "labels.nrrd", labels, (2.0, 2.0, 3.0))
    table = tmp_path / "labels.txt"
    table.write_text("# value name\n1 PTV 70\n2,Parotid_L\n")
    structures = load_structures(path, table)
    assert set(structures) == {"PTV 70", "Parotid_L"}
    np.testing.assert_array_equal(structures["PTV 70"].array, labels == 1)
    assert structures["Parotid_L"].spacing == (2.0, 2.0, 3.0)
    (tmp_path / "labels.json").write_text('{"1": "PTV70", "2": "Cord"}')
    assert set(load_structures(path, tmp_path / "labels.json")) == {"PTV70", "Cord"}
    with pytest.raises(InputError, match="needs a label table"):
        load_structures(path)


def test_dicom_series_folder(tmp_path):
    volume = np.full((3, 16, 16), -1000, np.int16)
    volume[:, 4:12, 4:12] = 40
    folder = tmp_path / "dicom"
    folder.mkdir()
    for k in range(volume.shape[0]):
        image = sitk.GetImageFromArray(volume[k : k + 1])
        image.SetSpacing((0.9, 0.9, 2.5))
        image.SetOrigin((0.0, 0.0, 2.5 * k))
        for key, value in {
            "0008|0060": "CT",
            "0020|000e": "1.2.3.4.5",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.5 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k}.dcm"))
        writer.Execute(image)
    ct = load_ct(folder)
    assert ct.array.shape == (3, 16, 16)
    assert ct.spacing[2] == pytest.approx(2.5)
    np.testing.assert_array_equal(ct.array, volume)


def test_demo_end_to_end(tmp_path, model_path, capsys):
    """The README's first command, with the (tiny) network instead of the shipped weights."""
    out = tmp_path / "demo"
    args = (
        "demo",
        "--out",
        out,
        "--model",
        model_path,
        "--slices",
        12,
        "--device",
        "cpu",
        "--tta",
        "--no-progress",
    )
    assert mambadose(*args) == 0
    printed = capsys.readouterr().out
    assert str(out / "dose.nii.gz") in printed and RESEARCH_DISCLAIMER in printed
    assert set(OUTPUT_FILES) <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["structures"]["unmatched"] == {} and summary["tta"] is True
    # a re-run may replace this folder: it holds only the demo's own files
    assert demo_folder_is_replaceable(out)
    (out / "notes.txt").write_text("mine")
    assert not demo_folder_is_replaceable(out)


def test_views_reach_the_model_and_the_summary(tmp_path, phantom_native, model_path, capsys, monkeypatch):
    ct, structures = phantom_native
    seen = {}

    def spy(model, card, patient, **kwargs):
        seen["views"] = kwargs["views"]
        return oracle_dose(model, card, patient)

    monkeypatch.setattr(ORACLE_TARGET, spy)
    out = tmp_path / "views"
    assert mambadose(*_predict_args(ct, structures, out, model_path), "--views", "axial,sagittal") == 0
    assert seen["views"] == ("axial", "sagittal")
    assert json.loads((out / "summary.json").read_text())["views"] == ["axial", "sagittal"]
    # a card without views predicts axial slices only
    assert mambadose(*_predict_args(ct, structures, tmp_path / "card", model_path)) == 0
    assert seen["views"] == ("axial",)
    capsys.readouterr()
    _refused(
        capsys,
        *_predict_args(ct, structures, tmp_path / "bad", model_path),
        "--views",
        "oblique",
        match="oblique",
    )
    assert not (tmp_path / "bad").exists()


def test_widen_ptv_hot_end_reaches_the_dose_and_the_summary(
    tmp_path, phantom_native, model_path, monkeypatch
):
    ct, structures = phantom_native

    def ramped(model, card, patient, **kwargs):  # the oracle is flat inside each PTV: add a ramp
        dose = oracle_dose(model, card, patient)
        ramp = np.linspace(0.0, 0.5, patient.shape[0], dtype=np.float32)[:, None, None]
        return np.where(patient.possible_dose_mask, dose + ramp, 0.0).astype(np.float32)

    monkeypatch.setattr(ORACLE_TARGET, ramped)
    plain, widened = tmp_path / "plain", tmp_path / "widened"
    assert mambadose(*_predict_args(ct, structures, plain, model_path)) == 0
    assert mambadose(*_predict_args(ct, structures, widened, model_path), "--widen-ptv-hot-end") == 0
    assert json.loads((plain / "summary.json").read_text())["widen_ptv_hot_end"] is False
    assert json.loads((widened / "summary.json").read_text())["widen_ptv_hot_end"] is True
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(plain / "dose.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(widened / "dose.nii.gz")))
    # a spread of 0.5 Gy at most, narrower than the table's: widening raises the hot voxels only
    assert (b >= a - 1e-3).all() and (b > a + 0.01).any()


def test_card_inplane_spacing_sets_the_model_grid(tmp_path, phantom_native, model_path, monkeypatch):
    """A model trained on one in-plane voxel size predicts a clinic CT on a model grid of that
    size, so ``predict_patient`` finds the patient on the card's grid and does not resample again."""
    from MambaDoseLib import inference, weights
    from MambaDoseLib.spacing import inplane_map_for

    model, card = weights.load_model(model_path)
    path = tmp_path / "spaced.safetensors"
    keep = {k: card[k] for k in ("channels", "normalisation", "training")}
    weights.save_model(path, model, {**keep, "inplane_spacing_mm": 3.5})
    seen = {}

    def spy(model, card, patient, **kwargs):
        spacing = inference.card_inplane_spacing(card)
        seen["on_card_grid"] = spacing is not None and inplane_map_for(patient, spacing).is_identity
        return oracle_dose(model, card, patient)

    monkeypatch.setattr(ORACLE_TARGET, spy)
    ct, structures = phantom_native
    result = predict_dose(load_ct(ct), load_structures(structures), model_path=path, device="cpu")
    assert result.model_grid.spacing == (3.5, 3.5, 2.5) and result.model_grid.size[:2] == (128, 128)
    assert seen["on_card_grid"]
    assert result.model_card["inplane_spacing_mm"] == 3.5
    # a card without the key keeps the default model grid
    default = predict_dose(load_ct(ct), load_structures(structures), model_path=model_path, device="cpu")
    assert default.model_grid.spacing == (3.906, 3.906, 2.5)
