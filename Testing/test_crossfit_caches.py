"""benchmarks/crossfit_caches.py: validation folds, each fold's training and held-out caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script
from MambaDoseLib.phantom import make_phantom_folder
from MambaDoseTrainingLib import cache as C

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "crossfit_caches.py"


@pytest.fixture(scope="module")
def crossfit():
    return load_script(_PATH)


def test_fold_ids_round_robin(crossfit):
    assert crossfit.fold_ids(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert crossfit.fold_ids(["a", "b", "c"], 3) == [["a"], ["b"], ["c"]]
    for bad in (1, 4):
        with pytest.raises(ValueError, match="--folds"):
            crossfit.fold_ids(["a", "b", "c"], bad)


def test_folds_cover_every_validation_patient_once(crossfit, tmp_path, capsys):
    for split, ids in (("train", (1, 2)), ("val", (201, 202, 203))):
        for n in ids:
            make_phantom_folder(tmp_path / split / f"pt_{n}", seed=n)
        C.build_cache(tmp_path / split, tmp_path / f"c_{split}", progress=False)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "pt_201").symlink_to(tmp_path / "val" / "pt_201")
    missing = [str(tmp_path / "c_train"), str(tmp_path / "c_val"), str(tmp_path / "cf_bad")]
    assert crossfit.main([*missing, "--openkbp-split", str(tmp_path / "partial")]) == 2
    assert "pt_202: no such patient folder" in capsys.readouterr().err
    assert not (tmp_path / "cf_bad").exists()  # checked before anything was written
    out = tmp_path / "cf"
    args = [
        str(tmp_path / "c_train"),
        str(tmp_path / "c_val"),
        str(out),
        "--openkbp-split",
        str(tmp_path / "val"),
    ]
    assert crossfit.main(args) == 0
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert folds == [["pt_201", "pt_203"], ["pt_202"]]
    for k, held in enumerate(folds):
        assert C.list_cached(out / f"fold{k}" / "heldout") == held
        train = C.list_cached(out / f"fold{k}" / "train")
        assert train[:2] == ["pt_1", "pt_2"] and not set(train) & set(held)
        assert set(train[2:]) | set(held) == {"pt_201", "pt_202", "pt_203"}
        assert sorted(p.name for p in (out / f"fold{k}" / "heldout-pats").iterdir()) == held
    assert "fold1: 1 held out (pt_202)" in capsys.readouterr().out
    assert crossfit.main(args) == 2  # a second call writes nothing over the first
    assert "already exists" in capsys.readouterr().err


def test_dash_train_cache_folds_one_cache_alone(crossfit, tmp_path, capsys):
    """TRAIN_CACHE ``-``: fold k's training cache is the other folds of the one cache (a cascade's
    first stage on the training patients), its held-out cache fold k."""
    from MambaDoseLib.phantom import make_phantom

    patients = [make_phantom((24, 24, 8), seed=n, patient_id=f"pt_{n}") for n in (1, 2, 3, 10, 11)]
    C.write_patients(patients, tmp_path / "train", "phantoms")
    out = tmp_path / "cf"
    assert crossfit.main(["-", str(tmp_path / "train"), str(out), "--folds", "3"]) == 0
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert folds == [["pt_1", "pt_10"], ["pt_2", "pt_11"], ["pt_3"]]
    ids = [p.patient_id for p in patients]
    for k, held in enumerate(folds):
        assert C.list_cached(out / f"fold{k}" / "heldout") == held
        assert C.list_cached(out / f"fold{k}" / "train") == [pid for pid in ids if pid not in held]
        for pid in ids:  # hard links to the one cache's files
            part = "heldout" if pid in held else "train"
            linked = out / f"fold{k}" / part / f"{pid}.npz.xz"
            assert linked.stat().st_ino == (tmp_path / "train" / f"{pid}.npz.xz").stat().st_ino
        assert not (out / f"fold{k}" / "heldout-pats").exists()
    assert "fold2: 1 held out (pt_3); training cache of 4 patients" in capsys.readouterr().out
    assert not (tmp_path / "-").exists()  # '-' is no folder
    assert crossfit.main(["-", str(tmp_path / "nope"), str(tmp_path / "cf2")]) == 2
    assert "nope" in capsys.readouterr().err
