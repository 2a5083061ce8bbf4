"""Is part of a slice-wise network's error noise between neighbouring slices? Smooth its predicted
dose along the slice axis (and in-plane) and score it on the validation patients.

    python benchmarks/smoothing_sweep.py MODEL.safetensors [--split DIR] [--no-tta] [--store DIR]
        [--sigmas 0,0.5,1,1.5,2] [--inplane-sigmas 0,0.5,1]

Each patient is predicted once (``inference.predict_patient``, with the left-right flip TTA unless
``--no-tta``) and kept (``--store``, float16 .npy, so a rerun only scores). The prediction is then
smoothed with a Gaussian of standard deviation sigma voxels along the axial axis (K) and
``inplane`` sigma along I and J, normalised inside the possible-dose mask (the smoothed dose times
mask divided by the smoothed mask: no dose leaks in from outside it), and scored with the
challenge's definitions. A slice-wise network predicts each slice on its own: when smoothing along
K helps more than in-plane smoothing of the same width, the network's slices disagree with each
other more than its pixels do, which more context across slices would address. Tune on validation
only.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from MambaDoseLib import inference, metrics, openkbp, weights
from scipy.ndimage import gaussian_filter


def smooth_in_mask(dose: np.ndarray, mask: np.ndarray, sigma_k: float, sigma_ij: float) -> np.ndarray:
    """Gaussian smoothing of ``dose`` (I, J, K) restricted to ``mask``: G*(dose*mask) / G*mask inside
    the mask, 0 outside. Sigmas in voxels; both 0 returns the dose unchanged (outside set to 0)."""
    m = np.asarray(mask, np.float32)
    if sigma_k == 0 and sigma_ij == 0:
        return np.where(mask, dose, 0.0).astype(np.float32)
    sigma = (sigma_ij, sigma_ij, sigma_k)
    num = gaussian_filter(dose * m, sigma, mode="constant")
    den = gaussian_filter(m, sigma, mode="constant")
    out = np.zeros_like(dose, dtype=np.float32)
    inside = np.asarray(mask, bool) & (den > 1e-6)
    out[inside] = num[inside] / den[inside]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--no-tta", action="store_true", help="one pass instead of the flip TTA")
    parser.add_argument("--store", type=Path, default=Path("/tmp/mambadose-smoothing"))
    parser.add_argument("--sigmas", default="0,0.5,0.75,1,1.5,2", help="sigmas along K (voxels)")
    parser.add_argument("--inplane-sigmas", default="0,0.5,1", help="sigmas along I and J (voxels)")
    args = parser.parse_args()
    model, card = weights.load_model(args.model, device="cpu")
    tta = not args.no_tta
    store = args.store / hashlib.sha1(f"{card['sha256']}{tta}".encode()).hexdigest()[:12]
    store.mkdir(parents=True, exist_ok=True)
    sig_k = [float(s) for s in args.sigmas.split(",")]
    sig_ij = [float(s) for s in args.inplane_sigmas.split(",")]
    grid = [(k, ij) for ij in sig_ij for k in sig_k]
    rows: dict[tuple[float, float], list] = {g: [] for g in grid}
    for folder in openkbp.list_patient_dirs(args.split):
        patient = openkbp.read_patient(folder)
        path = store / f"{folder.name}.npy"
        if not path.exists():
            t0 = time.perf_counter()
            dose = inference.predict_patient(model, card, patient, device="cpu", tta=tta)
            np.save(path, dose.astype(np.float16))
            print(f"{folder.name}: predicted in {time.perf_counter() - t0:.1f} s", flush=True)
        dose = np.load(path).astype(np.float32)
        mask = np.asarray(patient.possible_dose_mask, bool)
        ref = metrics.openkbp_dvh_metrics(patient.dose_gy, patient.structures, patient.voxel_volume_mm3)
        for k, ij in grid:
            smoothed = smooth_in_mask(dose, mask, k, ij)
            pred = metrics.openkbp_dvh_metrics(smoothed, patient.structures, patient.voxel_volume_mm3)
            score = metrics.dose_score(smoothed, patient.dose_gy, mask)
            rows[(k, ij)].append((score, metrics.dvh_score(pred, ref), (pred, ref)))
    n = len(rows[grid[0]])
    print(f"{n} patients of {args.split}, model {args.model}, {'flip TTA' if tta else 'one pass'}")
    print(f"{'sigma K':>8s} {'sigma IJ':>9s} {'dose score':>11s} {'DVH score':>10s} {'DVH pooled':>11s}")
    for k, ij in grid:
        r = rows[(k, ij)]
        dose_score = np.mean([x[0] for x in r])
        dvh = np.nanmean([x[1] for x in r])
        pooled = metrics.dvh_score_pooled([x[2] for x in r])
        print(f"{k:8.2f} {ij:9.2f} {dose_score:11.4f} {dvh:10.4f} {pooled:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
