"""benchmarks/pack_predictions.py: a folder of predictions round-trips to 0.005 Gy, nothing is
overwritten, and what cannot be packed is refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, load_script
from MambaDoseLib import openkbp

pack = load_script(REPO / "benchmarks" / "pack_predictions.py")


def _write_predictions(folder, seed):
    rng = np.random.default_rng(seed)
    doses = {}
    folder.mkdir()
    for pid in ("pt_3", "pt_12"):
        dose = np.zeros(openkbp.VOLUME_SHAPE, np.float32)
        idx = rng.choice(dose.size, 5000, replace=False)
        dose.ravel()[idx] = rng.uniform(0.001, 79.0, idx.size).astype(np.float32)
        openkbp.write_sparse_dose(folder / f"{pid}.csv", dose)
        doses[pid] = dose
    return doses


def test_round_trip(tmp_path):
    doses = _write_predictions(tmp_path / "pred", 0)
    npz = tmp_path / "p.npz"
    assert pack.main(["pack", str(tmp_path / "pred"), str(npz)]) == 0
    assert pack.main(["unpack", str(npz), str(tmp_path / "back")]) == 0
    for pid, dose in doses.items():
        back = openkbp.read_sparse_dose(tmp_path / "back" / f"{pid}.csv")
        assert np.abs(back - dose).max() <= 0.005 + 1e-5  # float32 rounding near 80 Gy
        assert np.array_equal(back == 0, np.round(dose * 100) == 0)
    with pytest.raises(FileExistsError, match="pt_12.csv"):
        pack.unpack(npz, tmp_path / "back")


def test_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no pt_"):
        pack.pack(tmp_path / "empty", tmp_path / "e.npz")
    hot = tmp_path / "hot"
    hot.mkdir()
    dose = np.zeros(openkbp.VOLUME_SHAPE, np.float32)
    dose[0, 0, 0] = 700.0
    openkbp.write_sparse_dose(hot / "pt_1.csv", dose)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack.pack(hot, tmp_path / "h.npz")
    assert not (tmp_path / "h.npz").exists()


average = load_script(REPO / "benchmarks" / "average_predictions.py")


def test_weighted_average_of_prediction_folders(tmp_path):
    a = _write_predictions(tmp_path / "a", 1)
    b = _write_predictions(tmp_path / "b", 2)
    assert average.main([str(tmp_path / "mean"), f"{tmp_path / 'a'}:3", str(tmp_path / "b")]) == 0
    for pid in a:
        got = openkbp.read_sparse_dose(tmp_path / "mean" / f"{pid}.csv")
        np.testing.assert_allclose(got, (3 * a[pid] + b[pid]) / 4, rtol=1e-6, atol=1e-6)
    with pytest.raises(FileExistsError):  # nothing is written over
        average.average(tmp_path / "mean", [(tmp_path / "a", 1.0)])
    (tmp_path / "a" / "pt_3.csv").unlink()
    with pytest.raises(ValueError, match="same pt_"):
        average.average(tmp_path / "other", [(tmp_path / "a", 1.0), (tmp_path / "b", 1.0)])
    with pytest.raises(SystemExit):
        average.main([str(tmp_path / "x"), f"{tmp_path / 'b'}:0"])
