"""``mambadose evaluate`` run as a real subprocess on a tiny synthetic OpenKBP split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHAPE = (128, 128, 128)


def _write_sparse(path: Path, volume: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
    """The OpenKBP sparse layout: header ``,data``; ``flat_index,value`` (or ``flat_index,`` for masks)."""
    lines = [",data"]
    if mask is not None:
        lines += [f"{i}," for i in np.flatnonzero(mask)]
    else:
        flat = volume.ravel()
        lines += [f"{i},{flat[i]:.3f}" for i in np.flatnonzero(flat > 0)]
    path.write_text("\n".join(lines) + "\n")


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def _make_patient(folder: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write one small synthetic patient; returns its reference dose (Gy) and possible-dose mask."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    body = _box((50, 50, 60), (70, 72, 70))
    ct = np.where(body, 1024.0 + rng.integers(0, 60, SHAPE), 0.0)
    dose = np.where(body, np.round(rng.uniform(5.0, 60.0, SHAPE), 3), 0.0)
    ptv = _box((56, 56, 62), (64, 64, 67))
    dose[ptv] = np.round(rng.uniform(66.0, 72.0, int(ptv.sum())), 3)
    _write_sparse(folder / "ct.csv", ct)
    _write_sparse(folder / "dose.csv", dose)
    _write_sparse(folder / "possible_dose_mask.csv", mask=body)
    _write_sparse(folder / "PTV70.csv", mask=ptv)
    _write_sparse(folder / "Brainstem.csv", mask=_box((52, 52, 61), (55, 70, 64)))
    _write_sparse(folder / "SpinalCord.csv", mask=_box((66, 60, 60), (69, 63, 70)))
    (folder / "voxel_dimensions.csv").write_text("3.906\n3.906\n2.5\n")
    return dose, body


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Reference split of 2 patients plus exact and perturbed (+1 Gy in the mask) predictions."""
    root = tmp_path_factory.mktemp("evaluate")
    exact, plus_one = root / "exact", root / "plus_one"
    exact.mkdir()
    plus_one.mkdir()
    for n, seed in ((3, 0), (12, 1)):
        dose, body = _make_patient(root / "ref" / f"pt_{n}", seed)
        _write_sparse(exact / f"pt_{n}.csv", dose)
        _write_sparse(plus_one / f"pt_{n}.csv", np.where(body, dose + 1.0, 0.0))
    return root


#: The real CLI entry (``cli.main``) in a fresh process, with only this command registered so the test
#: does not depend on the import of every other command module.
_MAIN = (
    "import sys; from MambaDoseLib import cli; "
    "sys.exit(cli.main(sys.argv[1:], commands={'evaluate': 'MambaDoseLib.commands.evaluate'}))"
)


def _evaluate(*args: str, full_cli: bool = False) -> subprocess.CompletedProcess:
    entry = ["-m", "MambaDoseLib.cli"] if full_cli else ["-c", _MAIN]  # -m: the `mambadose` dispatcher
    cmd = [sys.executable, *entry, "evaluate", *args]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=120)


def test_predictions_equal_to_reference_score_zero(split, tmp_path):
    per_patient, per_roi = tmp_path / "scores.csv", tmp_path / "rois.csv"
    done = _evaluate(
        str(split / "ref"),
        str(split / "exact"),
        "--csv",
        str(per_patient),
        "--per-roi-csv",
        str(per_roi),
        full_cli=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["dose_score 0.0000", "dvh_score 0.0000"]
    rows = pd.read_csv(per_patient)
    assert list(rows["patient_id"]) == ["pt_3", "pt_12"]  # numeric order
    assert np.allclose(rows["dose_score"], 0.0) and np.allclose(rows["dice_95"], 1.0)
    assert np.allclose(rows["slice_dose_score_paper"], 0.0)
    rois = pd.read_csv(per_roi)
    assert len(rois) == 6 and set(rois["roi"]) == {"PTV70", "Brainstem", "SpinalCord"}
    assert np.allclose(rois["diff_D95"], 0.0)


def test_perturbed_predictions(split):
    done = _evaluate(str(split / "ref"), str(split / "plus_one"))
    assert done.returncode == 0, done.stderr
    # +1 Gy on every mask voxel, 0 outside: |diff| sums to the mask size -> dose score 1;
    # every ROI lies in the mask, so every DVH metric moves by exactly 1 Gy -> DVH score 1.
    assert done.stdout.strip().splitlines()[-2:] == ["dose_score 1.0000", "dvh_score 1.0000"]
    assert "paper's variant" in done.stdout
    # both patients score exactly 1: the bootstrap interval of the means collapses onto 1
    assert "Gy: dose score 1.000-1.000, DVH score per patient 1.000-1.000" in done.stdout
    # the breakdown: every (ROI, metric) off by +1 Gy, a bias of +1; the last two lines unchanged
    done = _evaluate(str(split / "ref"), str(split / "plus_one"), "--breakdown")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2:] == ["dose_score 1.0000", "dvh_score 1.0000"]
    rows = [line.split() for line in lines if line.strip().startswith("PTV70 ")]
    assert [r[1] for r in rows] == ["D_1", "D_95", "D_99"]
    assert all(r[3] == "1.000" and r[4] == "+1.000" for r in rows)


def test_missing_prediction_is_named(split, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "pt_3.csv").write_text((split / "exact" / "pt_3.csv").read_text())
    done = _evaluate(str(split / "ref"), str(partial))
    assert done.returncode == 2
    assert "pt_12.csv" in done.stderr and "pt_3.csv" not in done.stderr.split("error:")[-1]


# --------------------------------------------------------------------------- predict-openkbp

_PREDICT_MAIN = _MAIN.replace(
    "{'evaluate': 'MambaDoseLib.commands.evaluate'}",
    "{'evaluate': 'MambaDoseLib.commands.evaluate', 'predict-openkbp': 'MambaDoseLib.commands.predict_openkbp'}",
)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PREDICT_MAIN, *args], capture_output=True, encoding="utf-8", timeout=300
    )


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A small untrained MambaUNetV2 (no mixer) saved through the project's weights module."""
    import torch
    from MambaDoseLib import weights
    from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2

    torch.manual_seed(0)
    model = MambaUNetV2(MambaUNetConfig(in_channels=3, channels=(4, 8, 16), mixer="none"))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    weights.save_model(path, model, {"channels": ["ct", "ptv_map", "possible_dose_mask"]})
    return path


def test_predict_openkbp_writes_masked_submissions_and_refuses_overwrite(split, tiny_weights, tmp_path):
    from MambaDoseLib import openkbp

    one = tmp_path / "one"  # a split of one patient keeps the test short
    one.mkdir()
    (one / "pt_3").symlink_to(split / "ref" / "pt_3", target_is_directory=True)
    out = tmp_path / "pred"
    args = ("predict-openkbp", str(one), str(out), "--model", str(tiny_weights), "--device", "cpu")
    done = _cli(*args, "--batch-size", "48")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predict_openkbp.json", "pt_3.csv"]
    assert "device cpu" in done.stderr and "s (read + predict + write)" in done.stderr
    patient = openkbp.read_patient(split / "ref" / "pt_3")
    dose = openkbp.read_sparse_dose(out / "pt_3.csv")
    assert np.all(dose[~patient.possible_dose_mask] == 0.0)

    refused = _cli(*args)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr

    again = _cli(*args, "--overwrite", "--batch-size", "7")  # other batching: same dose
    assert again.returncode == 0, again.stderr
    np.testing.assert_allclose(openkbp.read_sparse_dose(out / "pt_3.csv"), dose, atol=2e-3)

    scored = _cli("evaluate", str(one), str(out))
    assert scored.returncode == 0, scored.stderr
    last = scored.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("dose_score ") and last[1].startswith("dvh_score ")
    assert float(last[0].split()[1]) > 0.0


def test_predict_openkbp_widen_ptv_hot_end(split, tiny_weights, tmp_path):
    """--widen-ptv-hot-end writes calibration.widen_ptv_hot_tail of the plain prediction."""
    from MambaDoseLib import calibration, openkbp

    one = tmp_path / "one"
    one.mkdir()
    (one / "pt_3").symlink_to(split / "ref" / "pt_3", target_is_directory=True)
    plain, widened = tmp_path / "plain", tmp_path / "widened"
    args = ("--model", str(tiny_weights), "--device", "cpu")
    assert _cli("predict-openkbp", str(one), str(plain), *args).returncode == 0
    done = _cli("predict-openkbp", str(one), str(widened), *args, "--widen-ptv-hot-end")
    assert done.returncode == 0, done.stderr
    patient = openkbp.read_patient(split / "ref" / "pt_3")
    expected = calibration.widen_ptv_hot_tail(
        openkbp.read_sparse_dose(plain / "pt_3.csv"), patient.structures, patient.possible_dose_mask
    )
    np.testing.assert_allclose(openkbp.read_sparse_dose(widened / "pt_3.csv"), expected, atol=1e-4)


def test_predict_openkbp_cuda_without_gpu_is_a_clear_error(split, tiny_weights, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = _cli(
        "predict-openkbp",
        str(split / "ref"),
        str(tmp_path / "o"),
        "--model",
        str(tiny_weights),
        "--device",
        "cuda",
    )
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr


def test_predict_openkbp_resume_predicts_only_the_missing_patients(split, tiny_weights, tmp_path):
    """--resume keeps what a stopped run wrote and refuses predictions made another way."""
    from MambaDoseLib import openkbp

    out = tmp_path / "pred"
    args = ("predict-openkbp", str(split / "ref"), str(out), "--model", str(tiny_weights), "--device", "cpu")
    assert _cli(*args).returncode == 0
    manifest = json.loads((out / "predict_openkbp.json").read_text())
    assert (
        manifest["tta"] is False
        and len(manifest["model_sha256"]) == 64
        and "research" in manifest["disclaimer"].lower()
    )
    kept = (out / "pt_3.csv").read_bytes()
    (out / "pt_12.csv").unlink()  # as if the run had stopped before its last patient

    done = _cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert "1 of 2 patient(s) left to predict" in done.stderr
    assert (out / "pt_3.csv").read_bytes() == kept  # kept, not predicted again
    patient = openkbp.read_patient(split / "ref" / "pt_12")
    assert openkbp.read_sparse_dose(out / "pt_12.csv").shape == patient.possible_dose_mask.shape

    other = _cli(*args, "--resume", "--tta")  # another way of predicting: refused, nothing written
    assert other.returncode == 2 and "tta False -> True" in other.stderr
    assert (out / "pt_3.csv").read_bytes() == kept

    (out / "predict_openkbp.json").unlink()
    unknown = _cli(*args, "--resume")
    assert unknown.returncode == 2 and "predict_openkbp.json" in unknown.stderr
    both = _cli(*args, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with" in both.stderr
