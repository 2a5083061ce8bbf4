"""Re-estimate a trained network's BatchNorm statistics with dropout off: a test of the variance
shift between dropout and BatchNorm suspected in session 6's dropout runs.

    python benchmarks/bn_recalibrate.py MODEL.safetensors OUT.safetensors [--split DIR] [--patients N]

Every BatchNorm layer's running mean and variance are reset and collected again as a cumulative
average (momentum None) over the axial slices with possible-dose voxels of the first N patients
of the split (default: 40 of the 169 training patients), shuffled across patients (a seeded
permutation, as training draws its batches; batches of one patient's consecutive slices would
leave out the spread between patients) in batches of 32 (the last one smaller), with the rest of
the network in eval mode (dropout off) and no augmentation; no weight changes. Writes the network and its card (the
recalibration noted under "training") for ``benchmarks/ensemble_eval.py`` or ``mambadose
predict-openkbp``. Tune on validation only: the statistics come from training patients.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from MambaDoseLib import features, inference, openkbp, weights


def recalibrate(model: torch.nn.Module, batches) -> int:
    """Reset and re-collect every BatchNorm's running statistics over ``batches`` (tensors
    (B, C, H, W)), the rest of ``model`` in eval mode; returns the number of slices seen."""
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit("the model has no BatchNorm layer")
    momenta = [m.momentum for m in norms]
    seen = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
                seen += x.shape[0]
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return seen


def training_slices(split: Path, patients: int, channels: tuple[str, ...]) -> np.ndarray:
    """float16 (N, C, H, W): the axial feature slices with possible-dose voxels of the first
    ``patients`` patients of ``split``."""
    parts = []
    for folder in openkbp.list_patient_dirs(split)[:patients]:
        patient = openkbp.read_patient(folder)
        x = features.build_features(patient, channels)
        keep = inference.slices_with_voxels(np.asarray(patient.possible_dose_mask, bool), "axial")
        parts.append(inference.to_slices(x, "axial")[keep].astype(np.float16))
    return np.concatenate(parts)


def shuffled_batches(slices: np.ndarray, batch: int, seed: int = 0):
    """float32 batches of ``slices`` in the order of a seeded permutation (the last one smaller)."""
    order = np.random.default_rng(seed).permutation(len(slices))
    for b0 in range(0, len(order), batch):
        yield torch.from_numpy(slices[order[b0 : b0 + batch]].astype(np.float32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/train-pats"))
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the slice permutation")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: not overwritten")
    model, card = weights.load_model(args.model, device="cpu")
    if card.get("inplane_spacing_mm") is not None or tuple(inference.card_views(card)) != ("axial",):
        raise SystemExit("only axial models on the patients' own grid are supported here")
    if inference.model_slab(model) > 1:  # shuffled batches would mix patients inside a slab
        raise SystemExit("slab models (--slab K > 1) are not supported here")
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    slices = training_slices(args.split, args.patients, tuple(card["channels"]))
    seen = recalibrate(model, shuffled_batches(slices, args.batch, args.seed))
    card = copy.deepcopy(card)
    training = card.setdefault("training", {})
    training["bn_recalibration"] = {
        "source": str(args.model),
        "source_sha256": card.get("sha256"),
        "source_validation": training.pop("validation", None),  # the source network's, not this one's
        "seed": args.seed,
        "patients": args.patients,
        "slices": seen,
        "split": str(args.split),
        "note": "BatchNorm running statistics re-collected with dropout off (benchmarks/bn_recalibrate.py)",
    }
    storage = torch.float16 if card.get("storage_dtype") == "float16" else None
    weights.save_model(args.out, model, card, storage_dtype=storage)
    print(
        f"{args.model} -> {args.out}: BatchNorm statistics from {seen} slices, {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
