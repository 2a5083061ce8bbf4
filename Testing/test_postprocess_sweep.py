"""benchmarks/postprocess_sweep.py: smoothing a predicted dose inside the possible-dose mask, and
the sweep over stored predictions (``--folder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_script, run_script
from MambaDoseLib import metrics, openkbp
from MambaDoseLib.phantom import make_phantom_folder

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sweep = load_script(BENCH / "postprocess_sweep.py")


def test_smoothing_inside_the_mask_keeps_a_constant_and_zero_outside():
    mask = np.zeros((8, 8, 10), bool)
    mask[2:6, 2:6, 1:9] = True
    dose = np.where(mask, 50.0, 0.0).astype(np.float32)
    out = sweep.smooth_in_mask(dose, mask, 1.0, 0.5)
    assert np.allclose(out[mask], 50.0, atol=1e-4)  # the zeros outside do not leak in
    assert not out[~mask].any()
    ramp = np.where(mask, np.arange(10, dtype=np.float32)[None, None, :], 0.0)
    assert np.array_equal(sweep.smooth_in_mask(ramp, mask, 0.0, 0.0), ramp)
    # along the slices only: a linear ramp keeps its value in the middle (up to the far edges' tails)
    along = sweep.smooth_in_mask(ramp, mask, 1.0, 0.0)
    assert along[3, 3, 5] == pytest.approx(5.0, abs=2e-3)
    assert along[3, 3, 1] > 1.0 and along[3, 3, 8] < 8.0  # the ends pulled inwards


def _run(*args):
    return run_script(BENCH / "postprocess_sweep.py", *args)


def test_folder_sweep_scores_stored_predictions(tmp_path):
    split, pred = tmp_path / "split", tmp_path / "pred"
    scores = []
    for n in (1, 2):
        make_phantom_folder(split / f"pt_{n}", seed=n)
        patient = openkbp.read_patient(split / f"pt_{n}")
        dose = patient.dose_gy + 2.0 * patient.possible_dose_mask
        openkbp.write_sparse_dose(pred / f"pt_{n}.csv", dose)
        scores.append(metrics.score_patient(dose, patient, metrics.reference_dvh_metrics(patient)))
    done = _run("--split", split, "--folder", pred, "--sigmas", "0,0.5", "--inplane-sigmas", "0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"2 patients of {split}, the predictions in {pred}"
    first = [float(x) for x in lines[2].split()]
    assert first[:2] == [0.0, 0.0]
    assert first[2:] == pytest.approx(list(metrics.score_summary(scores)), abs=1e-4)
    assert len(lines) == 4
    refused = _run("--split", split, "--folder", pred, "--tta")
    assert refused.returncode != 0 and "--model and --tta do not apply" in refused.stderr
    (pred / "pt_2.csv").unlink()
    missing = _run("--split", split, "--folder", pred)
    assert missing.returncode != 0 and f"--folder {pred}: no stored prediction for pt_2" in missing.stderr
