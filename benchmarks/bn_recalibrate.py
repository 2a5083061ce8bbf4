"""Re-estimate a trained network's BatchNorm statistics with dropout off: a test of the variance
shift between dropout and BatchNorm suspected in session 6's dropout runs.

    python benchmarks/bn_recalibrate.py MODEL.safetensors OUT.safetensors [--split DIR] [--patients N]

Every BatchNorm layer's running mean and variance are reset and collected again as a cumulative
average (momentum None) over the axial slices with possible-dose voxels of the first N patients
of the split (default: 40 of the 169 training patients), with the rest of the network in eval mode
(dropout off) and no augmentation; no weight changes. Writes the network and its card (the
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
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    seen = 0
    with torch.no_grad():
        for x in batches:
            model(x)
            seen += x.shape[0]
    for m in norms:
        m.momentum = 0.1
    model.eval()
    return seen


def training_slices(split: Path, patients: int, channels: tuple[str, ...], batch: int):
    """Batches of axial feature slices (float32) with possible-dose voxels, patient by patient."""
    for folder in openkbp.list_patient_dirs(split)[:patients]:
        patient = openkbp.read_patient(folder)
        x = features.build_features(patient, channels)
        keep = inference.slices_with_voxels(np.asarray(patient.possible_dose_mask, bool), "axial")
        slices = inference.to_slices(x, "axial")[keep]
        for b0 in range(0, len(slices), batch):
            yield torch.from_numpy(np.ascontiguousarray(slices[b0 : b0 + batch], np.float32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/train-pats"))
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: not overwritten")
    model, card = weights.load_model(args.model, device="cpu")
    if card.get("inplane_spacing_mm") is not None or tuple(inference.card_views(card)) != ("axial",):
        raise SystemExit("only axial models on the patients' own grid are supported here")
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    seen = recalibrate(model, training_slices(args.split, args.patients, tuple(card["channels"]), args.batch))
    card = copy.deepcopy(card)
    card.setdefault("training", {})["bn_recalibration"] = {
        "source_sha256": card.get("sha256"),
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
