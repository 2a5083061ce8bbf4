"""dvh_stream: a second model's dose mixed in inside the structures only, and its options in
``mambadose predict-openkbp`` / ``predict`` (``--dvh-model``, ``--dvh-weight``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from MambaDoseLib import cli, dvh_stream, metrics, openkbp
from MambaDoseLib.errors import InputError
from MambaDoseLib.features import CHANNELS
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.phantom import make_phantom_folder
from MambaDoseLib.weights import save_model
from scipy import ndimage


def _volume_with_a_box():
    structures = {"PTV70": np.zeros((20, 20, 10), bool)}
    structures["PTV70"][8:12, 8:12, 4:6] = True
    mask = np.ones((20, 20, 10), bool)
    mask[0] = False
    return structures, mask, (2.0, 2.0, 2.5)


def test_structure_weight_is_one_inside_and_falls_linearly_outside():
    structures, _, spacing = _volume_with_a_box()
    w = dvh_stream.structure_weight(structures, spacing, 5.0, (20, 20, 10))
    assert (w[structures["PTV70"]] == 1.0).all()
    assert w[7, 10, 4] == pytest.approx(1.0 - 2.0 / 5.0)  # one voxel (2 mm) outside along axis 0
    assert w[6, 10, 4] == pytest.approx(1.0 - 4.0 / 5.0)
    assert w[5, 10, 4] == 0.0 and w[0, 0, 0] == 0.0  # 6 mm and far: no share
    seam = dvh_stream.structure_weight(structures, spacing, 0.0, (20, 20, 10))
    assert np.array_equal(seam, structures["PTV70"].astype(float))
    assert not dvh_stream.structure_weight({}, spacing, 5.0, (20, 20, 10)).any()
    with pytest.raises(ValueError, match="ramp_mm"):
        dvh_stream.structure_weight(structures, spacing, -1.0, (20, 20, 10))


def test_compose_takes_the_dvh_metrics_from_the_mix_inside():
    structures, mask, spacing = _volume_with_a_box()
    rng = np.random.default_rng(0)
    main = np.where(mask, rng.uniform(10.0, 70.0, mask.shape), 0.0)
    dvh = np.where(mask, rng.uniform(10.0, 70.0, mask.shape), 0.0)
    out = dvh_stream.compose(main, dvh, structures, mask, spacing, weight=0.75, ramp_mm=5.0)
    inside = structures["PTV70"]
    np.testing.assert_allclose(out[inside], 0.25 * main[inside] + 0.75 * dvh[inside], rtol=1e-6)
    far = dvh_stream.structure_weight(structures, spacing, 5.0, mask.shape) == 0
    np.testing.assert_allclose(out[far & mask], main[far & mask], rtol=1e-6)
    assert not out[~mask].any() and out.dtype == np.float32
    # the DVH metrics read the structure's voxels only: those of the mix inside
    mix = 0.25 * main + 0.75 * dvh
    assert metrics.openkbp_dvh_metrics(out, structures, 10.0) == pytest.approx(
        metrics.openkbp_dvh_metrics(mix.astype(np.float32), structures, 10.0), abs=1e-4
    )
    np.testing.assert_allclose(
        dvh_stream.compose(main, dvh, structures, mask, spacing, weight=0.0), main, rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dvh_stream.compose(main, dvh, structures, mask, spacing, weight=1.5)


def _tiny_model(path, seed):
    import torch

    torch.manual_seed(seed)
    config = MambaUNetConfig(in_channels=len(CHANNELS), channels=(8, 16), mixer="none", mixer_min_level=1)
    save_model(path, MambaUNetV2(config).eval(), {"config": config.to_dict(), "channels": list(CHANNELS)})
    return path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvh_stream")
    split = root / "split"
    make_phantom_folder(split / "pt_1", seed=1)
    return root, split, _tiny_model(root / "main.safetensors", 0), _tiny_model(root / "dvh.safetensors", 1)


def _predict_openkbp(split, out, *args):
    return cli.main(["predict-openkbp", str(split), str(out), "--device", "cpu", *map(str, args)])


def test_predict_openkbp_composes_the_two_models_doses(phantoms):
    root, split, main_path, dvh_path = phantoms
    assert _predict_openkbp(split, root / "main", "--model", main_path) == 0
    assert _predict_openkbp(split, root / "dvh", "--model", dvh_path) == 0
    assert (
        _predict_openkbp(
            split, root / "both", "--model", main_path, "--dvh-model", dvh_path, "--dvh-weight", 0.5
        )
        == 0
    )
    patient = openkbp.read_patient(split / "pt_1")
    main = openkbp.read_sparse_dose(root / "main" / "pt_1.csv")
    dvh = openkbp.read_sparse_dose(root / "dvh" / "pt_1.csv")
    both = openkbp.read_sparse_dose(root / "both" / "pt_1.csv")
    expected = dvh_stream.compose(
        main, dvh, patient.structures, patient.possible_dose_mask, patient.spacing_mm, 0.5
    )
    np.testing.assert_allclose(both, expected, atol=2e-3)  # the CSVs hold 3 decimals
    assert not np.allclose(both, main, atol=0.01)


def test_dvh_options_are_checked(phantoms, capsys):
    root, split, main_path, dvh_path = phantoms
    assert _predict_openkbp(split, root / "bad1", "--model", main_path, "--dvh-weight", 0.5) != 0
    assert "--dvh-weight needs --dvh-model" in capsys.readouterr().err
    assert (
        _predict_openkbp(
            split, root / "bad2", "--model", main_path, "--dvh-model", dvh_path, "--dvh-weight", 2
        )
        != 0
    )
    assert "--dvh-weight must lie in [0, 1]" in capsys.readouterr().err
    assert (
        _predict_openkbp(split, root / "bad3", "--model", main_path, "--dvh-model", root / "none.safetensors")
        != 0
    )
    assert "none.safetensors" in capsys.readouterr().err


def test_predict_dose_records_the_dvh_stream(phantoms, tmp_path):
    from MambaDoseLib.commands.demo import write_phantom_inputs
    from MambaDoseLib.predict import load_ct, load_structures, predict_dose, summary

    _, _, main_path, dvh_path = phantoms
    ct_path, structures_dir = write_phantom_inputs(tmp_path / "in", shape=(128, 128, 24))
    ct, structures = load_ct(ct_path), load_structures(structures_dir)
    plain = predict_dose(ct, structures, model_path=main_path, device="cpu")
    reports = []
    both = predict_dose(
        ct, structures, model_path=main_path, device="cpu", dvh_model_path=dvh_path,
        progress=lambda done, total: reports.append((done, total)),
    )  # fmt: skip
    # one count over both passes: it never goes back and ends complete
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert reports[-1][0] == reports[-1][1] == reports[0][1]  # both passes count the same slices
    assert reports[0][0] <= reports[0][1] // 2
    assert plain.dvh_model_path is None and plain.dvh_weight is None
    assert both.dvh_model_path == str(dvh_path) and both.dvh_weight == pytest.approx(2.0 / 3.0)
    assert not np.allclose(plain.dose.array, both.dose.array, atol=0.01)
    stream = json.loads(json.dumps(summary(both)))["dvh_stream"]
    assert stream == {"model": str(dvh_path), "weight": pytest.approx(2.0 / 3.0), "ramp_mm": 5.0}
    assert summary(plain)["dvh_stream"] is None
    with pytest.raises(InputError, match="needs a DVH-stream model"):
        predict_dose(ct, structures, model_path=main_path, device="cpu", dvh_weight=0.5)


def test_predict_with_the_shipped_dvh_stream(tmp_path):
    """``mambadose predict --dvh-model dvh``: the shipped DVH stream (three DVH-term networks)
    mixed into the shipped network's dose inside the structures, and recorded in summary.json."""
    import SimpleITK as sitk
    from MambaDoseLib import weights
    from MambaDoseLib.commands.demo import write_phantom_inputs

    ct_path, structures_dir = write_phantom_inputs(tmp_path / "in", shape=(128, 128, 24))
    common = ["predict", "--ct", str(ct_path), "--structures", str(structures_dir), "--device", "cpu"]
    assert cli.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "dvh"), "--dvh-model", "dvh"]) == 0
    stream = json.loads((tmp_path / "dvh" / "summary.json").read_text())["dvh_stream"]
    assert stream["model"] == str(weights.models_dir() / weights.DVH_MODEL_NAME)
    assert stream["weight"] == pytest.approx(2.0 / 3.0) and stream["ramp_mm"] == 5.0
    plain, mixed = (
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / "dose.nii.gz"))) for d in ("plain", "dvh")
    )
    images = {f.name: sitk.ReadImage(str(f)) for f in sorted(structures_dir.glob("*.nii.gz"))}
    masks = {name: sitk.GetArrayFromImage(image) > 0 for name, image in images.items()}
    ptv = masks["PTV_70.nii.gz"]
    assert np.abs(mixed[ptv] - plain[ptv]).mean() > 0.05  # another dose inside the structures
    assert mixed.max() < 1.3 * plain.max() and mixed[ptv].mean() == pytest.approx(plain[ptv].mean(), rel=0.1)
    # far (> 15 mm: the 5 mm ramp and the resampling to the model's grid and back) from every
    # structure the dose is the main model's
    union = np.logical_or.reduce(list(masks.values()))
    spacing = images["PTV_70.nii.gz"].GetSpacing()[::-1]
    far = ndimage.distance_transform_edt(~union, sampling=spacing) > 15.0
    assert far.sum() > 1000
    np.testing.assert_allclose(mixed[far], plain[far], atol=1e-3)
