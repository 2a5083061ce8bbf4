"""Score the first-stage doses a cascade cache carries (``benchmarks/cascade_priors.py``), alone and
averaged with stored predictions of other models, on an OpenKBP split.

    python benchmarks/score_priors.py CACHE[*W] ... [--model FILE[*W] ...] [--split DIR] [--store DIR]

Each CACHE's patients carry ``prior_dose_gy`` (the mean dose of the models its ``--part`` named, e.g.
the four first-stage networks, or second-stage networks written the same way); each ``--model`` is a
.safetensors file whose predictions ``ensemble_eval.py`` stored (same ``--store``). Prints, with the
challenge's definitions (``metrics.score_prediction``, reference from the OpenKBP split), the dose
score and DVH score (per patient and pooled) of every cache and model alone and of their weighted
mean (``*W``: weight, default 1). Tune on validation only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ensemble_eval import STORE, check_stored, store_folder
from MambaDoseLib import inference, metrics, openkbp, weights
from MambaDoseTrainingLib.cache import list_cached, load_patient


def weighted(text: str) -> tuple[str, float]:
    """``"path*3"`` -> (``"path"``, 3.0); SystemExit for a weight that is not > 0."""
    name, _, weight = text.partition("*")
    w = float(weight or 1)
    if not w > 0:
        raise SystemExit(f"{text!r}: weight must be > 0")
    return name, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", help="CACHE[*W] written by cascade_priors.py")
    parser.add_argument("--model", action="append", default=[], help="FILE[*W] with stored predictions")
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--store", type=Path, default=STORE)
    args = parser.parse_args(argv)
    caches = [weighted(c) for c in args.caches]
    folders = openkbp.list_patient_dirs(args.split)
    ids = [f.name for f in folders]
    for cache, _ in caches:
        missing = sorted(set(ids) - set(list_cached(cache)))
        if missing:
            raise SystemExit(f"{cache}: no patient {', '.join(missing[:3])} of {args.split}")
    models = []
    for spec in args.model:
        path, w = weighted(spec)
        card = weights.read_card(path)
        folder = store_folder(args.store, card, inference.card_views(card))
        check_stored(path, folder, folders)
        models.append((path, w, folder))
    names = [c for c, _ in caches] + [m[0] for m in models]
    wts = [w for _, w in caches] + [m[1] for m in models]
    labels = names + (["weighted mean of all"] if len(names) > 1 else [])
    scores: dict[str, list] = {label: [] for label in labels}
    for folder in folders:
        patient = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(patient)
        doses = [load_patient(cache, folder.name).prior_dose_gy for cache, _ in caches]
        doses += [np.load(f / f"{folder.name}.npy") for _, _, f in models]
        if len(doses) > 1:
            doses.append(np.average(doses, axis=0, weights=wts))
        for label, dose in zip(labels, doses, strict=True):
            scores[label].append(metrics.score_patient(dose, patient, ref))
    print(f"{len(folders)} patients of {args.split}")
    print(f"{'dose':60s} dose score  DVH score  DVH pooled")
    for label in labels:
        dose_mean, dvh_mean, pooled = metrics.score_summary(scores[label])
        print(f"{label:60s} {dose_mean:10.4f} {dvh_mean:10.4f} {pooled:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
