"""benchmarks/ship_ensemble.py: separately trained networks joined into one ensemble file whose
card states the measured validation figures and how they were measured."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import run_script
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2, MambaUNetV2Ensemble
from MambaDoseLib.weights import card_path, load_model, save_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ship_ensemble.py"
EVALUATE_TAIL = """  DVH score per patient, Gy: 1.6784 ± 0.7088 (n = 33)
dose_score 2.8083
dvh_score 1.6626
"""


def _member(tmp_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    path = tmp_path / f"m{seed}.safetensors"
    training = {"epochs_run": 2, "config": {"seed": seed, "dvh_loss_weight": 1.0}, "run_history": [1, 2]}
    save_model(path, MambaUNetV2(cfg).eval(), {"channels": ["ct", "ptv_map", "mask"], "training": training})
    return path


def test_members_join_with_their_summaries_and_the_measured_figures(tmp_path: Path) -> None:
    members = [_member(tmp_path, seed) for seed in (1, 2)]
    evaluation = tmp_path / "eval.txt"
    evaluation.write_text(EVALUATE_TAIL, encoding="utf-8")
    out = tmp_path / "ens.safetensors"
    done = run_script(
        SCRIPT,
        out,
        *members,
        "--half",
        "--validation",
        evaluation,
        "--validation-how=--tta, CPU",
        "--code-commit",
        "a" * 40,
    )
    assert done.returncode == 0, done.stderr
    ensemble, card = load_model(out)
    assert isinstance(ensemble, MambaUNetV2Ensemble) and card["ensemble_size"] == 2
    assert card["storage_dtype"] == "float16"
    training = card["training"]
    assert training["validation"] == {
        "val_dose_score": 2.8083,
        "val_dvh_score_pooled": 1.6626,
        "val_dvh_score": 1.6784,
    }
    assert training["validation_source"].endswith("predict-openkbp output (--tta, CPU)")
    assert [m["config"]["seed"] for m in training["members"]] == [1, 2]
    assert all("run_history" not in m for m in training["members"])
    assert training["code_commit"] == "a" * 40
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():  # the ensemble's output is its members' mean (float16 storage: close)
        mean = sum(load_model(m)[0](x) for m in members) / 2
        assert torch.allclose(ensemble(x), mean, atol=2e-2)


def test_validation_how_without_validation_is_refused(tmp_path: Path) -> None:
    members = [_member(tmp_path, seed) for seed in (1, 2)]
    out = tmp_path / "ens.safetensors"
    done = run_script(SCRIPT, out, *members, "--validation-how", "flip TTA")
    assert done.returncode != 0 and "--validation-how needs --validation" in done.stderr
    assert not out.exists() and not card_path(out).exists()
