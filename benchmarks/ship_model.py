"""Copy a trained run's best model into Resources/Models with the baselines' figures in its card.

    python benchmarks/ship_model.py RUN_DIR [--baseline NAME=RUN_DIR ...]
        [--baselines-from CARD.json [--previous-as NAME]] [--half] [--code-commit SHA]

RUN_DIR is a `mambadose train --out` folder (model_best.safetensors + .json). The card keeps
everything training wrote; this adds `training.baselines` (the validation figures of the other
runs trained with the same recipe), `training.run_history` (history.csv, per epoch) and sets the
scan backend to "auto" so the shipped file uses mamba-ssm's Triton kernel where it imports.
``--baselines-from`` copies the baselines of another card (e.g. the model shipped before, whose
baselines no longer have their run folders here); ``--previous-as NAME`` also lists that card's
own network as a baseline under NAME. Such entries keep a ``recipe`` note that they were trained
with that card's recipe, not this run's. ``--half`` stores the weights as float16; ``--code-commit`` records the commit the run was trained from
(``training.code_commit``; the GPU copy of the tree carries no git history to read it there). The new pair is
written and checked in a staging folder before it replaces the shipped one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from MambaDoseLib.weights import DEFAULT_MODEL_NAME, card_path, load_model, save_model

MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--baselines-from", type=Path, default=None, metavar="CARD.json")
    parser.add_argument("--previous-as", default=None, metavar="NAME")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    parser.add_argument(
        "--code-commit",
        default=None,
        metavar="SHA",
        help="the commit of this repository the run was trained from",
    )
    args = parser.parse_args()
    if args.previous_as and not args.baselines_from:
        parser.error("--previous-as needs --baselines-from")

    model, card = load_model(args.run_dir / "model_best.safetensors")  # checks the run's card
    # save_model writes the card's config from the model: the shipped file picks its scan backend
    model.config = dataclasses.replace(model.config, backend="auto")
    baselines = {}
    if args.baselines_from:
        previous = json.loads(args.baselines_from.read_text())
        recipe = (
            f"trained with the recipe of the earlier card sha256 {previous['sha256'][:12]} "
            "(README 'Training and results'; epochs may differ)"
        )
        for name, entry in previous["training"].get("baselines", {}).items():
            baselines[name] = {**entry, "recipe": entry.get("recipe", recipe)}
        if args.previous_as:
            baselines[args.previous_as] = {**_summary(previous), "recipe": recipe}
    for item in args.baseline:
        name, run = item.split("=", 1)
        baselines[name] = _summary(json.loads((Path(run) / "model_best.json").read_text()))
    card["training"]["baselines"] = baselines
    with open(args.run_dir / "history.csv") as f:
        card["training"]["run_history"] = list(csv.DictReader(f))

    card["training"]["source_sha256"] = card.get("sha256")  # the file shipped from
    if args.code_commit:
        card["training"]["code_commit"] = args.code_commit
    MODELS.mkdir(parents=True, exist_ok=True)
    target = MODELS / DEFAULT_MODEL_NAME
    with tempfile.TemporaryDirectory(dir=MODELS, prefix=".ship-") as staging:
        staged = Path(staging) / DEFAULT_MODEL_NAME
        save_model(staged, model, card, storage_dtype=torch.float16 if args.half else None)
        load_model(staged)  # refuses a card that does not match the file
        for path in (staged, card_path(staged)):
            path.chmod(0o644)
        # both checked before either replaces the shipped pair
        os.replace(staged, target)
        os.replace(card_path(staged), card_path(target))
    print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB) with {card_path(target).name}")


def _summary(other: dict) -> dict:
    """A baseline entry from another model card."""
    return {
        "mixer": other["config"]["mixer"],
        "sha256": other.get("sha256"),
        "parameters": sum(_numel(s) for s in other["tensors"].values()),
        **{k: other["training"][k] for k in ("epochs_run", "best_epoch", "wall_time_s", "device")},
        "validation": other["training"]["validation"],
    }


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
