"""Physical alignment of `predict`: the phantom at 1 mm vs at the training spacing.

Two "models": (a) an oracle that computes the phantom's analytic dose from the structures it is
given on the model grid (isolates the geometry chain: resample in, model grid, resample out);
(b) the network of the given weights (default: a random MambaUNetV2 of the default config).
For each, the dose predicted from the 1 mm input is compared, on the 1 mm grid inside the body,
with the dose predicted from the native (3.906 x 3.906 x 2.5 mm) input resampled onto that grid.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from MambaDoseLib import inference, phantom, weights
from MambaDoseLib.features import CHANNELS
from MambaDoseLib.geometry import patient_to_volumes, resample_to
from MambaDoseLib.model import MambaUNetConfig, MambaUNetV2
from MambaDoseLib.predict import predict_dose

SLICES_MM = 160.0
# usage: python benchmarks/alignment.py [WEIGHTS | random]  (default: the shipped weights)
if len(sys.argv) > 1 and sys.argv[1] == "random":  # a random MambaUNetV2 of the default config
    model_path = Path(tempfile.mkdtemp()) / "random_default.safetensors"
    torch.manual_seed(0)
    cfg = MambaUNetConfig(in_channels=len(CHANNELS))
    card = {
        "config": cfg.to_dict(),
        "channels": list(CHANNELS),
        "normalisation": {},
        "training": {"note": "random"},
    }
    weights.save_model(model_path, MambaUNetV2(cfg), card)
else:
    model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else weights.default_model_path()


def inputs(spacing):
    shape = tuple(int(round(e / s)) for e, s in zip((500.0, 500.0, SLICES_MM), spacing, strict=True))
    p = phantom.make_phantom(shape=shape, spacing_mm=spacing, with_dose=False)
    return patient_to_volumes(p)


def oracle(model, card, patient, **kw):
    return phantom._dose(patient.structures, patient.possible_dose_mask, patient.spacing_mm)


real = inference.predict_patient
results = {}
t = time.perf_counter()
native = inputs((3.906, 3.906, 2.5))
fine = inputs((1.0, 1.0, 1.0))
print(f"phantoms {time.perf_counter() - t:.0f}s", flush=True)
body = fine[0].array > -500
for label, fn in (("oracle", oracle), ("network", real)):
    inference.predict_patient = fn
    doses = {}
    for name, (ct, masks) in (("native", native), ("1mm", fine)):
        t = time.perf_counter()
        r = predict_dose(ct, masks, model_path=model_path, device="cpu")
        doses[name] = r.dose
        print(f"{label} {name}: {time.perf_counter() - t:.0f}s  max {r.dose.array.max():.2f} Gy", flush=True)
    a = resample_to(doses["native"], doses["1mm"], "linear").array[body]
    b = doses["1mm"].array[body]
    d = np.abs(a - b)
    hi = b >= 0.5 * 70
    print(
        f"{label}: |native - 1mm| inside body: mean {d.mean():.3f} Gy, p95 {np.percentile(d, 95):.3f}, p99 {np.percentile(d, 99):.3f}, max {d.max():.3f}; mean where >= 35 Gy: {d[hi].mean() if hi.any() else float('nan'):.3f} Gy; max dose {b.max():.2f}",
        flush=True,
    )
    # centre of mass of the 95% isodose (mm)
    for nm, dv in doses.items():
        m = dv.array >= (0.95 * 70 if label == "oracle" else 0.8 * dv.array.max())
        kji = np.argwhere(m).mean(axis=0)
        print(
            f"  {nm}: centre of the high-dose region (LPS mm): {(dv.grid.index_to_physical() @ np.r_[kji[::-1], 1])[:3].round(2)}"
        )
