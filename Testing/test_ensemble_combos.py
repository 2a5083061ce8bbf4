"""benchmarks/ensemble_combos.py: weighted means of stored predictions, and cross-fitted names whose
prediction for each patient comes from the network of that patient's fold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from MambaDoseLib import calibration, metrics, openkbp
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.phantom import make_phantom_folder
from MambaDoseLib.weights import save_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
store_folder = load_script(BENCH / "ensemble_eval.py").store_folder  # where the scripts keep predictions


def _model_file(path: Path, seed: int) -> Path:
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    save_model(
        path, MambaUNetV2(cfg).eval(), {"channels": ["ct", "ptv_map", "possible_dose_mask"], "seed": seed}
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two phantom patients (pt_1 in fold 0, pt_2 in fold 1), three model files, and a store where
    every stored prediction is the reference dose plus a known offset inside the possible-dose mask."""
    root = tmp_path_factory.mktemp("combos")
    split = root / "split"
    for n in (1, 2):
        make_phantom_folder(split / f"pt_{n}", seed=n)
    (root / "folds.json").write_text(json.dumps({"folds": [["pt_1"], ["pt_2"]]}))
    files = {
        name: _model_file(root / f"{name}.safetensors", seed) for seed, name in enumerate(("a0", "a1", "b"))
    }
    store = root / "store"
    offsets = {("a0", "pt_1"): 1.0, ("a1", "pt_2"): 3.0, ("b", "pt_1"): 2.0, ("b", "pt_2"): 2.0}
    for (name, pid), offset in offsets.items():
        card = json.loads(files[name].with_suffix(".json").read_text())
        folder = store_folder(store, card, ("axial",))
        folder.mkdir(parents=True, exist_ok=True)
        patient = openkbp.read_patient(split / pid)
        np.save(folder / f"{pid}.npy", patient.dose_gy + offset * patient.possible_dose_mask)
    return root, split, files, store


def _run(root, split, store, *args):
    cmd = [
        sys.executable,
        str(BENCH / "ensemble_combos.py"),
        "--split",
        str(split),
        "--store",
        str(store),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=300, cwd=root)


def _store_offset(folder: Path, split: Path, offset: float) -> None:
    """Store, as a model's predictions of pt_1 and pt_2, the reference plus ``offset`` Gy inside
    the possible-dose mask."""
    folder.mkdir(parents=True, exist_ok=True)
    for pid in ("pt_1", "pt_2"):
        patient = openkbp.read_patient(split / pid)
        np.save(folder / f"{pid}.npy", patient.dose_gy + offset * patient.possible_dose_mask)


def _dose_scores(result) -> dict[str, float]:
    """Each combo's dose score from ensemble_combos.py's table."""
    assert result.returncode == 0, result.stderr
    return {ln[:40].strip(): float(ln[40:].split()[0]) for ln in result.stdout.splitlines()[2:]}


def test_crossfit_name_takes_each_patient_from_its_fold(setup):
    root, split, files, store = setup
    result = _run(
        root, split, store, "--folds", str(root / "folds.json"), "--model", f"b={files['b']}",
        "--crossfit", f"a={files['a0']}:{files['a1']}", "--combo", "ca=a", "--combo", "cb=b",
        "--combo", "cab=a*3+b",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    overall = {ln.split()[0]: float(ln.split()[1]) for ln in lines[2:5]}
    assert overall == pytest.approx({"ca": 2.0, "cb": 2.0, "cab": (1.25 + 2.75) / 2}, abs=1e-4)
    fold0 = {ln.split()[0]: float(ln.split()[1]) for ln in lines[6:9]}
    fold1 = {ln.split()[0]: float(ln.split()[1]) for ln in lines[10:13]}
    assert lines[5].startswith("fold 0 only (1 patients)") and lines[9].startswith("fold 1 only")
    assert fold0 == pytest.approx({"ca": 1.0, "cb": 2.0, "cab": 1.25}, abs=1e-4)
    assert fold1 == pytest.approx({"ca": 3.0, "cb": 2.0, "cab": 2.75}, abs=1e-4)


def test_paired_difference_per_patient(setup):
    root, split, files, store = setup
    result = _run(
        root, split, store, "--folds", str(root / "folds.json"), "--model", f"b={files['b']}",
        "--crossfit", f"a={files['a0']}:{files['a1']}", "--combo", "ca=a", "--combo", "cb=b", "--paired", "ca:cb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # dose score per patient: a 1 and 3, b 2 and 2 -> b - a = +1 and -1
    assert (
        "dose score: cb better for 1 of 2 patients; mean +0.0000 Gy, 95 % interval -1.0000 to +1.0000 Gy"
        in (result.stdout)
    )
    bad = _run(root, split, store, "--model", f"b={files['b']}", "--combo", "cb=b", "--paired", "cb:zz")
    assert bad.returncode != 0 and "expected A:B, two --combo labels" in bad.stderr


def test_refusals_name_the_problem(setup):
    root, split, files, store = setup
    folds = ["--folds", str(root / "folds.json")]
    swapped = _run(
        root, split, store, *folds, "--crossfit", f"a={files['a1']}:{files['a0']}", "--combo", "c=a"
    )
    assert swapped.returncode != 0 and "a fold 0" in swapped.stderr and "pt_1" in swapped.stderr
    one_file = _run(root, split, store, *folds, "--crossfit", f"a={files['a0']}", "--combo", "c=a")
    assert one_file.returncode != 0 and "2 files, one per fold, joined by ':'" in one_file.stderr
    weighted = _run(
        root, split, store, *folds, "--crossfit", f"a={files['a0']}*2:{files['a1']}", "--combo", "c=a"
    )
    assert weighted.returncode != 0 and "weights go in --combo" in weighted.stderr
    twice = _run(
        root, split, store, *folds, "--model", f"a={files['b']}", "--crossfit", f"a={files['a0']}:{files['a1']}",
        "--combo", "c=a",
    )  # fmt: skip
    assert twice.returncode != 0 and "the name a is given twice" in twice.stderr
    no_folds = _run(root, split, store, "--crossfit", f"a={files['a0']}:{files['a1']}", "--combo", "c=a")
    assert no_folds.returncode != 0 and "--crossfit needs --folds" in no_folds.stderr
    (root / "folds1.json").write_text(json.dumps({"folds": [["pt_1"]]}))
    outside = _run(
        root,
        split,
        store,
        "--folds",
        str(root / "folds1.json"),
        "--model",
        f"b={files['b']}",
        "--combo",
        "c=b",
    )
    assert outside.returncode != 0 and "no fold holds pt_2" in outside.stderr


def test_model_tta_reads_the_flip_tta_store_and_widened_combos_are_added(setup):
    root, split, files, store = setup
    card = json.loads(files["b"].with_suffix(".json").read_text())
    _store_offset(store_folder(store, card, ("axial",), tta=True), split, 4.0)  # b's flip-TTA predictions
    result = _run(
        root, split, store, "--model", f"b={files['b']}", "--model-tta", f"tb={files['b']}",
        "--combo", "plain=b", "--combo", "mix=b+tb", "--widen-ptv-hot-end",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {ln[:40].strip(): [float(x) for x in ln[40:].split()[:3]] for ln in result.stdout.splitlines()[2:]}
    assert set(rows) == {"plain", "mix", "plain widened", "mix widened"}
    assert rows["plain"][0] == pytest.approx(2.0, abs=1e-4)
    assert rows["mix"][0] == pytest.approx(3.0, abs=1e-4)  # (2 + 4) / 2 everywhere
    # the widened rows are the same means through calibration.widen_ptv_hot_tail, then scored
    scores = []
    for pid in ("pt_1", "pt_2"):
        patient = openkbp.read_patient(split / pid)
        mean = patient.dose_gy + 3.0 * patient.possible_dose_mask
        wide = calibration.widen_ptv_hot_tail(mean, patient.structures, patient.possible_dose_mask)
        scores.append(metrics.score_patient(wide, patient, metrics.reference_dvh_metrics(patient)))
    dose, dvh, _ = metrics.score_summary(scores)
    assert rows["mix widened"][:2] == pytest.approx([dose, dvh], abs=1e-4)
    missing = _run(root, split, store, "--model-tta", f"a={files['a0']}", "--combo", "c=a")
    assert missing.returncode != 0 and "no stored prediction" in missing.stderr


def test_roi_bias_is_the_mean_signed_metric_error(setup):
    root, split, files, store = setup
    result = _run(
        root, split, store, "--model", f"b={files['b']}", "--combo", "cb=b", "--combo", "cb2=b*2",
        "--roi-bias", "PTV70:D_95", "--roi-bias", "Brainstem:mean",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = {}  # b is the reference + 2 Gy inside the possible-dose mask
    for key in (("PTV70", "D_95"), ("Brainstem", "mean")):
        errs = []
        for pid in ("pt_1", "pt_2"):
            patient = openkbp.read_patient(split / pid)
            pred = patient.dose_gy + 2.0 * patient.possible_dose_mask
            got = metrics.openkbp_dvh_metrics(pred, patient.structures, patient.voxel_volume_mm3)
            ref = metrics.reference_dvh_metrics(patient)
            if key in got and key in ref:
                errs.append(got[key] - ref[key])
        expected[key] = float(np.mean(errs))
    out = result.stdout
    assert "mean signed error of PTV70 D_95 (prediction - reference):" in out
    block = out.split("mean signed error of Brainstem mean")[1].splitlines()
    assert float(block[1].split()[1]) == pytest.approx(expected[("Brainstem", "mean")], abs=1e-3)
    assert expected[("Brainstem", "mean")] > 0.5  # the organ lies (at least partly) inside the mask
    bad = _run(
        root, split, store, "--model", f"b={files['b']}", "--combo", "cb=b", "--roi-bias", "PTV70:mean"
    )
    assert bad.returncode != 0 and "--roi-bias 'PTV70:mean'" in bad.stderr


def test_folder_of_submission_csvs_is_read_as_a_model(setup):
    root, split, files, store = setup
    csvs = root / "csv_preds"
    csvs.mkdir(exist_ok=True)
    for pid in ("pt_1", "pt_2"):  # the reference + 6 Gy inside the possible-dose mask, as pt_<N>.csv
        patient = openkbp.read_patient(split / pid)
        openkbp.write_sparse_dose(csvs / f"{pid}.csv", patient.dose_gy + 6.0 * patient.possible_dose_mask)
    result = _run(
        root, split, store, "--model", f"b={files['b']}", "--folder", f"f={csvs}",
        "--combo", "cf=f", "--combo", "mix=f+b*2",
    )  # fmt: skip
    assert _dose_scores(result) == pytest.approx({"cf": 6.0, "mix": (6.0 + 2 * 2.0) / 3}, abs=1e-3)
    (csvs / "pt_2.csv").unlink()
    missing = _run(root, split, store, "--folder", f"f={csvs}", "--combo", "cf=f")
    assert missing.returncode != 0 and "--folder" in missing.stderr and "pt_2" in missing.stderr
    twice = _run(root, split, store, "--model", f"f={files['b']}", "--folder", f"f={root}", "--combo", "c=f")
    assert twice.returncode != 0 and "the name f is given twice" in twice.stderr


def test_four_flip_and_mirror_only_tta_are_stored_apart(setup, tmp_path):
    """A network trained with the anterior-posterior flip is predicted with four flips under TTA
    (its card says so) and can be predicted with the mirror alone for comparison: the two are kept
    apart in the store, and --model-tta / --model-tta-lr read one each. For other networks the
    store key is what it always was, so earlier stored predictions are found."""
    from MambaDoseLib import inference

    root, split, files, store = setup
    plain = json.loads(files["b"].with_suffix(".json").read_text())
    assert store_folder(store, plain, ("axial",), tta=True) == store_folder(
        store, plain, ("axial",), tta=True, flips=inference.LR_FLIPS
    )
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    ap_file = tmp_path / "ap.safetensors"
    augment = {"flip_lr_p": 0.5, "flip_ap_p": 0.5, "swap_lr_channels": False}
    save_model(
        ap_file,
        MambaUNetV2(cfg).eval(),
        {"channels": ["ct", "ptv_map", "possible_dose_mask"], "training": {"config": {"augment": augment}}},
    )
    card = json.loads(ap_file.with_suffix(".json").read_text())
    four = store_folder(store, card, ("axial",), tta=True)
    mirror = store_folder(store, card, ("axial",), tta=True, flips=inference.LR_FLIPS)
    assert four != mirror
    _store_offset(four, split, 1.0)
    _store_offset(mirror, split, 5.0)
    result = _run(
        root, split, store, "--model-tta", f"f={ap_file}", "--model-tta-lr", f"m={ap_file}",
        "--combo", "four=f", "--combo", "mirror=m",
    )  # fmt: skip
    assert _dose_scores(result) == pytest.approx({"four": 1.0, "mirror": 5.0}, abs=1e-4)


def test_inside_takes_one_combo_inside_the_structures_and_the_other_elsewhere(setup):
    root, split, files, store = setup
    hot = _model_file(root / "hot.safetensors", seed=7)  # its own store folder: the fixture stays as it is
    _store_offset(
        store_folder(store, json.loads(hot.with_suffix(".json").read_text()), ("axial",)), split, 5.0
    )
    result = _run(
        root, split, store, "--model", f"b={files['b']}", "--model", f"a={hot}", "--combo", "cb=b",
        "--combo", "ca=a", "--inside", "mix=cb:ca", "--widen-ptv-hot-end",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {
        ln[:40].strip(): [float(x) for x in ln[40:].split()[:3]] for ln in result.stdout.splitlines()[2:8]
    }
    assert "mix" in result.stdout and "cb outside the structures, ca inside" in result.stdout
    expected: dict[str, list] = {"mix": [], "mix widened": []}
    for pid in ("pt_1", "pt_2"):
        patient = openkbp.read_patient(split / pid)
        mask = patient.possible_dose_mask
        inside = np.logical_or.reduce([np.asarray(m, bool) for m in patient.structures.values()])
        mix = patient.dose_gy + np.where(inside, 5.0, 2.0) * mask
        ref = metrics.reference_dvh_metrics(patient)
        expected["mix"].append(metrics.score_patient(mix, patient, ref))
        wide = calibration.widen_ptv_hot_tail(mix, patient.structures, mask)
        expected["mix widened"].append(metrics.score_patient(wide, patient, ref))
    for label, scores in expected.items():
        assert rows[label] == pytest.approx(list(metrics.score_summary(scores)), abs=1e-4)
    # the DVH metrics read only the structures' voxels: the DVH score is IN's, the dose score between
    assert rows["mix"][1:] == pytest.approx(rows["ca"][1:], abs=1e-4)
    assert rows["cb"][0] < rows["mix"][0] < rows["ca"][0]
    bad = _run(root, split, store, "--model", f"b={files['b']}", "--combo", "cb=b", "--inside", "m=cb:zz")
    assert bad.returncode != 0 and "OUT and IN two --combo labels" in bad.stderr
    # a ramp outside the structures: the DVH score stays IN's, the dose moves towards IN's
    ramped = _run(
        root, split, store, "--model", f"b={files['b']}", "--model", f"a={hot}", "--combo", "cb=b",
        "--combo", "ca=a", "--inside", "mix=cb:ca", "--inside-ramp-mm", "8",
    )  # fmt: skip
    assert ramped.returncode == 0, ramped.stderr
    ramp_rows = {
        ln[:40].strip(): [float(x) for x in ln[40:].split()[:3]] for ln in ramped.stdout.splitlines()[2:5]
    }
    assert ramp_rows["mix"][1:] == pytest.approx(rows["ca"][1:], abs=1e-4)
    assert rows["mix"][0] < ramp_rows["mix"][0] < rows["ca"][0]
    no_inside = _run(
        root, split, store, "--model", f"b={files['b']}", "--combo", "cb=b", "--inside-ramp-mm", "5"
    )
    assert no_inside.returncode != 0 and "for --inside combos" in no_inside.stderr
