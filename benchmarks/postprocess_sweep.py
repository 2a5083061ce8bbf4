"""Does smoothing the predicted dose across slices help a slice-wise model? A sweep on validation.

    python benchmarks/postprocess_sweep.py [--split /tmp/openkbp/validation-pats] [--model FILE]
        [--store /tmp/mambadose-sweep] [--sigmas 0,0.5,1,1.5,2]

Predicts every patient once with the (shipped) model on the CPU through ``inference.predict_patient``
(stored under ``--store``, reused by later calls), then scores a Gaussian filter of the dose along
the slice axis (sigma in slices; ``scipy.ndimage.gaussian_filter1d``, edges reflected) and,
separately, in-plane (sigma in pixels), as a normalised convolution inside the possible-dose mask
(filter(dose) / filter(mask), zero outside), with the challenge's dose and DVH scores
(``metrics``). Tune on validation only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from MambaDoseLib import inference, metrics, openkbp, weights
from scipy import ndimage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--store", type=Path, default=Path("/tmp/mambadose-sweep"))
    parser.add_argument("--sigmas", default="0,0.35,0.5,0.75,1,1.5")
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    model, card = weights.load_model(args.model or weights.default_model_path(), device="cpu")
    args.store.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for folder in openkbp.list_patient_dirs(args.split):
        patient = openkbp.read_patient(folder)
        stored = args.store / f"{folder.name}.npy"
        if not stored.exists():
            t0 = time.perf_counter()
            np.save(stored, inference.predict_patient(model, card, patient, device="cpu"))
            print(f"{folder.name}: predicted in {time.perf_counter() - t0:.1f} s", flush=True)
        pred = np.load(stored)
        ref_metrics = metrics.openkbp_dvh_metrics(
            patient.dose_gy, patient.structures, patient.voxel_volume_mm3
        )
        pdm = patient.possible_dose_mask
        for where, axes in (("slices", (2,)), ("in-plane", (0, 1))):
            for sigma in sigmas:
                if sigma == 0 and where == "in-plane":
                    continue
                # normalised convolution: the zeros outside the possible-dose mask do not leak in
                dose, weight = pred.astype(np.float64), pdm.astype(np.float64)
                for axis in axes if sigma > 0 else ():
                    dose = ndimage.gaussian_filter1d(dose, sigma, axis=axis, mode="reflect")
                    weight = ndimage.gaussian_filter1d(weight, sigma, axis=axis, mode="reflect")
                dose = np.where(pdm, dose / np.maximum(weight, 1e-6), 0.0).astype(np.float32)
                score = metrics.dose_score(dose, patient.dose_gy, pdm)
                pm = metrics.openkbp_dvh_metrics(dose, patient.structures, patient.voxel_volume_mm3)
                rows.setdefault((where, sigma), []).append((score, metrics.dvh_score(pm, ref_metrics)))
    print(f"{len(rows[('slices', sigmas[0])])} patients of {args.split}")
    print("filter      sigma  dose score  DVH score (mean per patient)")
    for (where, sigma), values in rows.items():
        d, v = np.array(values).T
        print(f"{where:10s} {sigma:5.2f}  {d.mean():10.4f}  {np.nanmean(v):9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
