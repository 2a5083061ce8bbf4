"""benchmarks/gpu/half_copy.py: float16 copies of model files for the GPU machine's way back."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import run_script
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.weights import load_model, save_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "half_copy.py"


def test_copies_are_float16_files_of_the_same_network(tmp_path):
    torch.manual_seed(0)
    cfg = MambaUNetConfig(in_channels=3, channels=(8, 16), mixer="none", mixer_min_level=1)
    sources = []
    for k in range(2):
        sources.append(tmp_path / f"run{k}.safetensors")
        save_model(
            sources[-1], MambaUNetV2(cfg).eval(), {"channels": ["ct", "ptv_map", "possible_dose_mask"]}
        )
    pairs = [str(p) for s in sources for p in (s, tmp_path / f"half_{s.name}")]
    done = run_script(SCRIPT, *pairs)
    assert done.returncode == 0, done.stderr
    for src in sources:
        half = tmp_path / f"half_{src.name}"
        model, card = load_model(src)
        copy, copy_card = load_model(half)
        assert copy_card["storage_dtype"] == "float16" and copy_card["channels"] == card["channels"]
        assert half.stat().st_size < 0.6 * src.stat().st_size
        for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items(), strict=True):
            assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
    odd = run_script(SCRIPT, sources[0])
    assert odd.returncode != 0 and "usage: half_copy.py SRC DST" in odd.stderr
