"""benchmarks/data_scaling.py: a learning curve (dose score against training patients) and its fits."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HEADER = "epoch,train_loss,val_dose_score,val_dvh_score,lr,slices_per_s,epoch_time_s,val_dvh_score_pooled\n"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("data_scaling", BENCH / "data_scaling.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _history(path: Path, best: float, dvh: float = 1.8) -> Path:
    """A run whose best validated epoch scores ``best`` (a worse one before and after it)."""
    path.write_text(
        HEADER
        + f"1,0.5,nan,nan,1e-4,100,10,\n2,0.4,{best + 0.3},{dvh + 0.2},1e-4,200,10,{dvh + 0.1}\n"
        + f"3,0.3,{best},{dvh},1e-4,300,10,{dvh - 0.01}\n4,0.2,{best + 0.01},{dvh},0,300,10,{dvh}\n"
    )
    return path


def test_power_fit_recovers_an_exact_power_law():
    ds = _module()
    n = np.array([20.0, 40, 80, 160, 160])
    b, c = ds.fit_power(n, 10.0 * n**-0.3)
    assert b == pytest.approx(10.0, rel=1e-9) and c == pytest.approx(0.3, rel=1e-9)


def test_floor_fit_recovers_a_floor_and_the_patients_needed():
    ds = _module()
    n = np.array([20.0, 20, 40, 40, 80, 80, 160, 160])
    s = 2.0 + 8.0 * n**-0.5
    a, b, c = ds.fit_floor(n, s, grid=4000)
    assert a == pytest.approx(2.0, abs=2e-3) and c == pytest.approx(0.5, abs=5e-3)
    # s = 2.5 at N = (0.5 / 8)^-2 = 256; below the floor never
    assert ds.patients_needed((a, b, c), 2.5) == pytest.approx(256, rel=0.02)
    assert ds.patients_needed((a, b, c), 1.9) == float("inf")
    assert ds.predict((2.0, 8.0, 0.5), 64) == pytest.approx(3.0)


def test_floor_fit_refuses_scores_that_rise_with_n():
    ds = _module()
    n = np.array([20.0, 40, 80])
    with pytest.raises(SystemExit, match="do not fall"):
        ds.fit_floor(n, np.array([2.0, 2.5, 3.0]))


def test_cli_prints_groups_fits_and_targets(tmp_path):
    law = {21: 3.5, 42: 3.2, 84: 3.0, 169: 2.9}
    args = []
    for k, (n, s) in enumerate(law.items()):
        for seed, delta in enumerate((-0.01, 0.01)):
            args.append(f"{n}={_history(tmp_path / f'r{k}{seed}_history.csv', s + delta, dvh=1.7 + k / 10)}")
    result = run_script(
        BENCH / "data_scaling.py", *args, "--target", "2.6", "--target", "0.5", "--bootstrap", "50"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    row = next(ln.split() for ln in out.splitlines() if ln.split()[:2] == ["42", "2"])
    # best epochs 3.19 and 3.21: mean 3.200, sd 0.014; DVH pooled at the best epoch 1.8 - 0.01
    assert row[2:5] == ["3.200", "0.014", "1.790"]
    assert "fit power: s(N) =" in out and "fit floor: s(N) =" in out
    assert re.search(r"dose score 2\.600 Gy at N = [\d,]+ \(95 % interval", out)
    # the floor fit's floor lies above 0.5 Gy, the power law reaches it at some huge N
    floor_part = out.split("fit floor")[1]
    assert "dose score 0.500 Gy at N = never" in floor_part


@pytest.mark.parametrize(
    "spec, message",
    [
        ("abc=x.csv", "not an integer"),
        ("12", "expected N=HISTORY.csv"),
        ("0=x.csv", ">= 1"),
        ("5=missing.csv", "no such"),
    ],
)
def test_cli_refuses_bad_run_specs(tmp_path, spec, message):
    result = run_script(BENCH / "data_scaling.py", spec)
    assert result.returncode != 0 and message in result.stderr


def test_cli_needs_three_distinct_n(tmp_path):
    a = _history(tmp_path / "a.csv", 3.0)
    b = _history(tmp_path / "b.csv", 2.9)
    result = run_script(BENCH / "data_scaling.py", f"20={a}", f"40={b}")
    assert result.returncode != 0 and "three or more" in result.stderr


def test_patients_needed_is_never_when_the_score_does_not_fall():
    ds = _module()
    assert ds.patients_needed((0.0, 3.0, -0.1), 2.6) == float("inf")
    assert ds.patients_needed((0.0, 3.0, 1e-6), 1.0) == float("inf")  # beyond floating point
