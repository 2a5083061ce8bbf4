"""Does averaging over small in-plane shifts (on top of the left-right flip) improve a model's
validation scores? A test-time augmentation experiment; tune on validation only.

    python benchmarks/shift_tta_sweep.py MODEL.safetensors [--split DIR] [--shift PX] [--store DIR]

For every patient the model predicts the volume once per pass: flip in {none, left-right} x shift
in {(0, 0), (+PX, 0), (-PX, 0), (0, +PX), (0, -PX)} voxels along the (anterior-posterior,
right-left) axes. A shifted pass rolls the feature volume and the possible-dose mask in-plane
(``np.roll``: OpenKBP's 128 x 128 slices have air at their edges, so what wraps round is air),
predicts through ``inference.predict_volume`` (the flip with its Right/Left channel swap, as
``--tta`` does) and rolls the dose back. Each pass is stored (``--store``, float16 .npy) so a rerun
only scores. Printed: the challenge's dose score and DVH score (per patient and pooled) of the
identity pass, the flip TTA (2 passes), the shifts alone (5) and flips x shifts (10).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from MambaDoseLib import features as feats
from MambaDoseLib import inference, metrics, openkbp, weights


def passes(shift: int) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    shifts = [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    return [(flip, s) for flip in ((), (1,)) for s in shifts]


def predict_pass(
    model, card, x: np.ndarray, within: np.ndarray, flip: tuple[int, ...], shift: tuple[int, int]
) -> np.ndarray:
    """Dose (Gy) of one pass: features ``x`` (C, I, J, K) and mask rolled by ``shift``, one flipped
    TTA pass, the dose rolled back."""
    if shift != (0, 0):
        x = np.roll(x, shift, axis=(1, 2))
        within = np.roll(within, shift, axis=(0, 1))
    dose = inference.predict_volume(
        model,
        x,
        device="cpu",
        views=inference.card_views(card),
        tta=True,
        tta_flips=(flip,),
        swap_channels=inference.lr_swap_pairs(tuple(card["channels"])),
        within=within,
    )
    if shift != (0, 0):
        dose = np.roll(dose, (-shift[0], -shift[1]), axis=(0, 1))
    return dose


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--shift", type=int, default=4, help="shift in voxels (default 4)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/mambadose-shift-tta"))
    args = parser.parse_args()
    model, card = weights.load_model(args.model, device="cpu")
    if card.get("inplane_spacing_mm") is not None:
        raise SystemExit("a model on a common in-plane grid is not supported here")
    store = args.store / hashlib.sha1(f"{card['sha256']}{args.shift}".encode()).hexdigest()[:12]
    store.mkdir(parents=True, exist_ok=True)
    plan = passes(args.shift)
    groups = {
        "identity (1 pass)": [0],
        "left-right flip TTA (2)": [0, 5],
        f"shifts of {args.shift} voxels (5)": [0, 1, 2, 3, 4],
        "flip x shifts (10)": list(range(10)),
    }
    results: dict[str, list] = {g: [] for g in groups}
    for folder in openkbp.list_patient_dirs(args.split):
        patient = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(patient)
        doses, x = [], None
        within = np.asarray(patient.possible_dose_mask, bool)
        for i, (flip, shift) in enumerate(plan):
            path = store / f"{folder.name}_{i}.npy"
            if not path.exists():
                t0 = time.perf_counter()
                if x is None:
                    x = feats.build_features(patient, tuple(card["channels"]))
                np.save(path, predict_pass(model, card, x, within, flip, shift).astype(np.float16))
                print(
                    f"{folder.name} pass {i} flip {flip} shift {shift}: {time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
            doses.append(np.load(path).astype(np.float32))
        for group, members in groups.items():
            dose = np.mean([doses[i] for i in members], axis=0)
            results[group].append(metrics.score_patient(dose, patient, ref))
    print(f"{len(results['identity (1 pass)'])} patients of {args.split}, model {args.model}")
    print(f"{'passes':32s} dose score  DVH score  DVH pooled")
    for group, rows in results.items():
        dose, dvh, pooled = metrics.score_summary(rows)
        print(f"{group:32s} {dose:10.4f} {dvh:10.4f} {pooled:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
