"""Does smoothing the predicted dose across slices help a slice-wise model? A sweep on validation.

    python benchmarks/postprocess_sweep.py [--split /tmp/openkbp/validation-pats] [--model FILE] [--tta]
        [--store /tmp/mambadose-sweep] [--sigmas 0,0.35,0.5,0.75,1,1.5] [--inplane-sigmas 0,0.5,1]
    python benchmarks/postprocess_sweep.py --folder PRED_DIR [...]

Predicts every patient once with the model (default: the shipped one) on the CPU through
``inference.predict_patient`` (with the left-right flip TTA when ``--tta``; stored under
``--store`` per model and TTA, reused by later calls), then scores a Gaussian filter of the dose
for every pair of a sigma along the slice axis (``--sigmas``, in slices) and one in-plane
(``--inplane-sigmas``, in pixels) (``scipy.ndimage.gaussian_filter1d`` along each axis, edges
reflected), as a normalised convolution inside the possible-dose mask (filter(dose) /
filter(mask), zero outside), with the challenge's dose and DVH scores (``metrics``; DVH per
patient and pooled). A slice-wise network predicts each slice on its own: when smoothing along the
slices helps more than in-plane smoothing of the same width, its slices disagree with each other
more than its pixels do. ``--folder`` scores the predictions in a folder instead (``pt_<N>.csv``,
the challenge's format, e.g. an ensemble's flip-TTA doses made on a GPU by ``predict-openkbp``).
Tune on validation only.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from ensemble_eval import check_stored  # this folder is on sys.path when run as a script
from MambaDoseLib import inference, metrics, openkbp, weights
from scipy import ndimage


def smooth_in_mask(
    dose: np.ndarray, mask: np.ndarray, sigma_slices: float, sigma_inplane: float
) -> np.ndarray:
    """Gaussian filter of ``dose`` (I, J, K) inside ``mask`` as a normalised convolution (the zeros
    outside the mask do not leak in): sigma ``sigma_slices`` along K and ``sigma_inplane`` along I
    and J, in voxels; float32, zero outside the mask (unfiltered inside when both are 0)."""
    out, weight = dose.astype(np.float64), mask.astype(np.float64)
    for axes, sigma in (((2,), sigma_slices), ((0, 1), sigma_inplane)):
        for axis in axes if sigma > 0 else ():
            out = ndimage.gaussian_filter1d(out, sigma, axis=axis, mode="reflect")
            weight = ndimage.gaussian_filter1d(weight, sigma, axis=axis, mode="reflect")
    return np.where(mask, out / np.maximum(weight, 1e-6), 0.0).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tta", action="store_true", help="predict with the left-right flip TTA")
    parser.add_argument("--folder", type=Path, help="score the pt_<N>.csv predictions in this folder")
    parser.add_argument("--store", type=Path, default=Path("/tmp/mambadose-sweep"))
    parser.add_argument("--sigmas", default="0,0.35,0.5,0.75,1,1.5", help="along the slices (voxels)")
    parser.add_argument("--inplane-sigmas", default="0,0.5,1", help="in-plane (voxels)")
    args = parser.parse_args()
    grid = [(float(k), float(ij)) for ij in args.inplane_sigmas.split(",") for k in args.sigmas.split(",")]
    if args.folder is not None and (args.model is not None or args.tta):
        raise SystemExit("--folder scores stored predictions: --model and --tta do not apply")
    folders = openkbp.list_patient_dirs(args.split)
    if args.folder is not None:
        check_stored(f"--folder {args.folder}", args.folder, folders, suffix=".csv")
    else:
        model, card = weights.load_model(args.model or weights.default_model_path(), device="cpu")
        store = args.store / hashlib.sha1(f"{card['sha256']}{args.tta}".encode()).hexdigest()[:12]
        store.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[float, float], list] = {g: [] for g in grid}
    for folder in folders:
        patient = openkbp.read_patient(folder)
        if args.folder is not None:
            pred = openkbp.read_sparse_dose(args.folder / f"{folder.name}.csv")
        else:
            stored = store / f"{folder.name}.npy"
            if not stored.exists():
                t0 = time.perf_counter()
                pred = inference.predict_patient(model, card, patient, device="cpu", tta=args.tta)
                np.save(stored, pred)
                print(f"{folder.name}: predicted in {time.perf_counter() - t0:.1f} s", flush=True)
            pred = np.load(stored).astype(np.float32)
        pdm = np.asarray(patient.possible_dose_mask, bool)
        ref = metrics.reference_dvh_metrics(patient)
        for k, ij in grid:
            dose = smooth_in_mask(pred, pdm, k, ij)
            rows[(k, ij)].append(metrics.score_patient(dose, patient, ref))
    if args.folder is not None:
        print(f"{len(rows[grid[0]])} patients of {args.split}, the predictions in {args.folder}")
    else:
        model_name = args.model or "the shipped model"
        passes = "flip TTA" if args.tta else "one pass"
        print(f"{len(rows[grid[0]])} patients of {args.split}, {model_name}, {passes}")
    print(f"{'sigma K':>8s} {'sigma IJ':>9s} {'dose score':>11s} {'DVH score':>10s} {'DVH pooled':>11s}")
    for (k, ij), scores in rows.items():
        dose_score, dvh, pooled = metrics.score_summary(scores)
        print(f"{k:8.2f} {ij:9.2f} {dose_score:11.4f} {dvh:10.4f} {pooled:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
