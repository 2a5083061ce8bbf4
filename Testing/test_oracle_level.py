"""benchmarks/oracle_level.py: the dose score after a per-patient level correction chosen with the
reference (an oracle bound on what a model of the plan's level could gain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_script, run_script
from MambaDoseLib import openkbp
from MambaDoseLib.phantom import make_phantom_folder

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
oracle = load_script(BENCH / "oracle_level.py")


def test_oracle_scale_is_the_weighted_median_of_the_ratios():
    # ratios 1, 2, 4 with weights 1, 1, 3: the weighted median is 4 (half the weight lies at 4)
    pred = np.array([1.0, 1.0, 3.0])
    ref = np.array([1.0, 2.0, 12.0])
    assert oracle.oracle_scale(pred, ref) == 4.0
    # sum |a pred - ref| at a = 4: 3 + 2 + 0 = 5; every other a on a grid does no better
    costs = [np.abs(a * pred - ref).sum() for a in np.linspace(0.0, 6.0, 601)]
    assert min(costs) == pytest.approx(5.0)
    # no positive prediction: no scale to choose
    assert oracle.oracle_scale(np.zeros(3), ref) == 1.0


def test_a_scaled_prediction_is_undone_exactly():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 70.0, (6, 6, 4))
    mask = np.ones(ref.shape, bool)
    mask[0] = False
    ref[~mask] = 0.0
    ptv70 = np.zeros(ref.shape, bool)
    ptv70[2:4, 2:4, 1:3] = True
    out = oracle.corrected_scores(0.8 * ref, ref, mask, ptv70)
    assert out["a"] == pytest.approx(1.25)
    assert out["scale"] == pytest.approx(0.0, abs=1e-9)
    assert out["ptv70 D95"] == pytest.approx(0.0, abs=1e-9)
    assert out["as predicted"] == pytest.approx(0.2 * ref[mask].mean())
    # a constant offset inside the mask is what the offset oracle undoes
    shifted = np.where(mask, ref + 3.0, 0.0)
    assert oracle.corrected_scores(shifted, ref, mask, None)["offset"] == pytest.approx(0.0, abs=1e-9)


def test_cli_on_phantoms(tmp_path):
    split, pred = tmp_path / "split", tmp_path / "pred"
    for n in (1, 2):
        make_phantom_folder(split / f"pt_{n}", seed=n)
        patient = openkbp.read_patient(split / f"pt_{n}")
        openkbp.write_sparse_dose(pred / f"pt_{n}.csv", 0.9 * patient.dose_gy)
    done = run_script(BENCH / "oracle_level.py", split, pred)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[-1]
    assert line.startswith(f"{pred}: as predicted ")
    assert "scale 0.0000" in line and "oracle scale a 1.1111" in line
