"""benchmarks/ensemble_members.py: an ensemble file split back into one model file per member."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import run_script
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2, MambaUNetV2Ensemble
from MambaDoseLib.weights import load_model, save_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CHANNELS = ["ct", "ptv_map", "possible_dose_mask"]


def _run(*args):
    return run_script(BENCH / "ensemble_members.py", *args)


def test_members_come_back_with_their_weights_config_and_summary(tmp_path):
    torch.manual_seed(0)
    configs = [
        MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16),
        MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 16), d_state=8, headdim=8, chunk_size=16),
    ]
    ensemble = MambaUNetV2Ensemble(configs).eval()
    card = {"channels": CHANNELS, "training": {"members": [{"run": "a"}, {"run": "b", "views": ["axial"]}]}}
    path = tmp_path / "ens.safetensors"
    save_model(path, ensemble, card, storage_dtype=torch.float16)
    result = _run(path, tmp_path / "out", "--only", "1")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "member0.safetensors").exists()
    member, member_card = load_model(tmp_path / "out" / "member1.safetensors")
    assert isinstance(member, MambaUNetV2) and member.config.channels == (8, 16, 16, 16)
    assert member_card["storage_dtype"] == "float16" and member_card["channels"] == CHANNELS
    assert member_card["training"]["run"] == "b" and member_card["training"]["member_index"] == 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ensemble.members[1].half().float()(x)  # the float16-stored weights
        assert torch.allclose(member(x), expected, atol=1e-4)


def test_refuses_a_single_network_and_a_missing_member(tmp_path):
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16, 16, 32), d_state=8, headdim=8, chunk_size=16)
    single = tmp_path / "one.safetensors"
    save_model(single, MambaUNetV2(cfg), {"channels": CHANNELS})
    result = _run(single, tmp_path / "out")
    assert result.returncode != 0 and "not an ensemble" in result.stderr
    ens = tmp_path / "ens.safetensors"
    save_model(ens, MambaUNetV2Ensemble(cfg, 2), {"channels": CHANNELS})
    result = _run(ens, tmp_path / "out", "--only", "2")
    assert result.returncode != 0 and "no member 2 (it has 2)" in result.stderr
