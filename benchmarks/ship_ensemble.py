"""Join separately trained MambaUNetV2 models into one ensemble file (``model.MambaUNetV2Ensemble``).

    python benchmarks/ship_ensemble.py OUT.safetensors MEMBER.safetensors MEMBER.safetensors ...
        [--views axial] [--validation EVALUATE_OUTPUT.txt [--validation-how TEXT]] [--half]
        [--code-commit SHA]

A MEMBER that is itself an ensemble file adds each of its networks (and their summaries from its
card's ``training.members``, marked ``from_ensemble``).

Every member must take the same channel list; their architectures may differ (e.g. 2D and 3D
networks, other widths: the card then lists each member's config, ``member_configs``, and
prediction runs the members of each slab size on their own and weighs them by number). The card keeps each
member's training summary (without its per-epoch history) under ``training.members``; its
``views`` are ``--views`` (default: the first member's); ``--validation`` copies the dose score,
DVH score and pooled DVH score from the output of ``mambadose evaluate`` run on the ensemble's
predictions (``mambadose predict-openkbp ... --model OUT``), so the card states measured figures
(``--validation-how`` adds how those predictions were made, e.g. ``--tta``, to the card's
``validation_source``);
``--half`` stores the weights as float16 (half the file; the model computes in float32);
``--code-commit`` records the commit the members were trained from (``training.code_commit``, as
``ship_model.py`` does: the GPU copy of the tree carries no git history to read it there).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch
from MambaDoseLib.inference import card_inplane_spacing, card_views, check_slab_views, parse_views
from MambaDoseLib.model import MambaUNetV2Ensemble
from MambaDoseLib.weights import load_model, save_model, set_backend


def evaluate_figures(text: str) -> dict[str, float]:
    """dose_score, dvh_score (per patient) and the pooled DVH score from `mambadose evaluate` output."""
    figures = {}
    for key, pattern in (
        ("val_dose_score", r"^dose_score ([0-9.]+)$"),
        ("val_dvh_score_pooled", r"^dvh_score ([0-9.]+)$"),
        ("val_dvh_score", r"DVH score per patient, Gy: ([0-9.]+)"),
    ):
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise SystemExit(f"--validation: no {key} in the evaluate output")
        figures[key] = float(match.group(1))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("members", nargs="+", type=Path)
    parser.add_argument("--views", default=None)
    parser.add_argument("--validation", type=Path, default=None)
    parser.add_argument("--validation-how", default=None, help="how --validation's predictions were made")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    parser.add_argument(
        "--code-commit",
        default=None,
        metavar="SHA",
        help="the commit of this repository the members were trained from",
    )
    args = parser.parse_args()
    if len(args.members) < 2:
        raise SystemExit("an ensemble needs at least two members (an ensemble file counts as one)")
    if args.validation_how and args.validation is None:
        raise SystemExit("--validation-how needs --validation")

    loaded = [load_model(path) for path in args.members]
    first_card = loaded[0][1]
    networks, members = [], []  # (MambaUNetV2, its card's summary) per member, ensembles opened up
    for path, (model, card) in zip(args.members, loaded, strict=True):
        if card["channels"] != first_card["channels"]:
            raise SystemExit(f"{path}: channels differ from {args.members[0]}'s")
        if isinstance(model, MambaUNetV2Ensemble):  # its members join one by one, with their summaries
            summaries = card.get("training", {}).get("members")
            if not isinstance(summaries, list) or len(summaries) != len(model.members):
                raise SystemExit(f"{path}: its card's training.members does not list one summary per network")
            networks += list(model.members)
            members += [{"from_ensemble": path.name, **m} for m in card["training"]["members"]]
            continue
        summary = {k: v for k, v in card.get("training", {}).items() if k not in ("run_history", "baselines")}
        networks.append(model)
        members.append(
            {
                "file": path.name,
                "sha256": card["sha256"],
                "views": card.get("views", ["axial"]),
                # save_model takes the ensemble's grid from these (and refuses members that differ)
                "inplane_spacing_mm": card_inplane_spacing(card),
                **summary,
            }
        )
    ensemble = MambaUNetV2Ensemble([_network(model.config) for model in networks])
    for member, model in zip(ensemble.members, networks, strict=True):
        member.load_state_dict(model.state_dict())
    set_backend(ensemble, "auto")
    views = parse_views(args.views) if args.views else card_views(first_card)
    training = {"members": members}
    if args.validation:
        training["validation"] = evaluate_figures(args.validation.read_text())
        training["validation_source"] = "mambadose evaluate on the ensemble's predict-openkbp output"
        if args.validation_how:
            training["validation_source"] += f" ({args.validation_how})"
    if args.code_commit:
        training["code_commit"] = args.code_commit
    card = {
        "channels": first_card["channels"],
        "views": list(views),
        "normalisation": first_card.get("normalisation", {}),
        "training": training,
    }
    check_slab_views(ensemble, views)  # a member of slab > 1 predicts axial slices only
    save_model(args.out, ensemble, card, storage_dtype=torch.float16 if args.half else None)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), {len(networks)} members, views {views}"
    )
    return 0


def _network(config):
    """The config without its training-only fields (dropout, gradient checkpointing, scan backend):
    members that differ only there run the same network."""
    return dataclasses.replace(config, dropout=0.0, grad_checkpoint=False, backend="auto")


if __name__ == "__main__":
    raise SystemExit(main())
