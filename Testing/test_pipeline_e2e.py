"""The whole research pipeline on synthetic phantoms, through the real `mambadose` command (CPU):
OpenKBP folders -> preprocess -> train (a few steps) -> resume -> predict-openkbp -> evaluate."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from MambaDoseLib.phantom import make_phantom_folder


def mambadose(*args: str | Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "MambaDoseLib.cli", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=600,
    )
    assert done.returncode == 0, f"mambadose {args[0]} failed:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openkbp")
    for split, ids in (("train-pats", (1, 2)), ("validation-pats", (201,))):
        for n in ids:
            make_phantom_folder(root / split / f"pt_{n}", seed=n)
    return root


def test_preprocess_train_resume_predict_evaluate(splits, tmp_path):
    caches = {}
    for split in ("train-pats", "validation-pats"):
        caches[split] = tmp_path / "cache" / split
        mambadose("preprocess", splits / split, caches[split], "--no-progress")

    out = tmp_path / "run"
    train = [
        "train",
        "--train-cache", caches["train-pats"],
        "--val-cache", caches["validation-pats"],
        "--out", out,
        "--mixer", "mamba2",
        "--backend", "torch",
        "--model-channels", "8,16,32,64",
        "--batch-size", "4",
        "--slices-per-epoch", "8",
        "--warmup-epochs", "1",
        "--lr", "3e-3",
        "--workers", "1",
        "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip
    mambadose(*train, "--epochs", "2")
    mambadose(*train, "--epochs", "4", "--resume")  # continues the same run to epoch 4

    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4]
    losses = [float(row["train_loss"]) for row in history]
    assert losses[-1] < losses[0], f"training loss did not go down: {losses}"
    model = out / "model_best.safetensors"
    assert model.is_file() and model.with_suffix(".json").is_file()

    predictions = tmp_path / "pred"
    mambadose("predict-openkbp", splits / "validation-pats", predictions, "--model", model, "--device", "cpu")
    assert (predictions / "pt_201.csv").is_file()

    # the same model averaged over two views; an unknown view is refused by name
    views = tmp_path / "pred_views"
    mambadose(
        "predict-openkbp", splits / "validation-pats", views, "--model", model, "--views", "axial,coronal"
    )
    assert (views / "pt_201.csv").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "MambaDoseLib.cli", "predict-openkbp", str(splits / "validation-pats"),
         str(tmp_path / "pred_bad"), "--model", str(model), "--views", "axial,oblique"],
        capture_output=True, encoding="utf-8", timeout=600,
    )  # fmt: skip
    assert bad.returncode != 0 and "oblique" in bad.stderr and not (tmp_path / "pred_bad").exists()

    lines = mambadose("evaluate", splits / "validation-pats", predictions).stdout.strip().splitlines()
    assert lines[-2].startswith("dose_score ") and lines[-1].startswith("dvh_score ")
    dose_score, dvh_score = float(lines[-2].split()[1]), float(lines[-1].split()[1])
    assert 0.0 < dose_score < 80.0 and 0.0 <= dvh_score < 80.0
