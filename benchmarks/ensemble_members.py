"""Split an ensemble file into one model file per member (the inverse of ``ship_ensemble.py``).

    python benchmarks/ensemble_members.py ENSEMBLE.safetensors OUT_DIR [--only I,J,...]

Writes ``OUT_DIR/member<I>.safetensors`` (+ card) for each member I (0-based, the ensemble's order):
the member's network with the ensemble's channels, normalisation and in-plane grid, and as its
``training`` the summary the ensemble's card keeps for it (``training.members[I]``). Stored as the
ensemble is (float16 when the ensemble is). Used to predict one member on its own, e.g. to take
it out of the ensemble's mean (``average_predictions.py`` with a negative weight) or to swap it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from MambaDoseLib.model import MambaUNetV2, MambaUNetV2Ensemble
from MambaDoseLib.weights import load_model, save_model


def split(path: Path, out_dir: Path, only: list[int] | None = None) -> list[Path]:
    """Write the members of the ensemble at ``path`` to ``out_dir``; returns the files written."""
    model, card = load_model(path)
    if not isinstance(model, MambaUNetV2Ensemble):
        raise SystemExit(f"{path}: not an ensemble (its card has no ensemble_size > 1)")
    summaries = card.get("training", {}).get("members")
    if not isinstance(summaries, list) or len(summaries) != len(model.members):
        summaries = [{} for _ in model.members]
    indices = range(len(model.members)) if only is None else only
    dtype = getattr(torch, card["storage_dtype"]) if card.get("storage_dtype") else None
    written = []
    for i in indices:
        if not 0 <= i < len(model.members):
            raise SystemExit(f"{path}: no member {i} (it has {len(model.members)})")
        network = MambaUNetV2(model.members[i].config)
        network.load_state_dict(model.members[i].state_dict())
        member_card = {
            "channels": card["channels"],
            "views": summaries[i].get("views") or card.get("views", ["axial"]),
            "normalisation": card.get("normalisation", {}),
            "training": {"from_ensemble": path.name, "member_index": i, **summaries[i]},
        }
        if card.get("inplane_spacing_mm") is not None:
            member_card["inplane_spacing_mm"] = card["inplane_spacing_mm"]
        target = out_dir / f"member{i}.safetensors"
        save_model(target, network, member_card, storage_dtype=dtype)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensemble", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--only", default=None, help="comma-separated member indices (default: all)")
    args = parser.parse_args()
    only = [int(x) for x in args.only.split(",")] if args.only else None
    for target in split(args.ensemble, args.out_dir, only):
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
