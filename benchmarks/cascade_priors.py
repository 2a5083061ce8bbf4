"""A cascade's second-stage data: cached patients given a first-stage model's dose as ``prior_dose``.

    python benchmarks/cascade_priors.py OUT_CACHE --part CACHE=MODEL[+MODEL...] [--part ...]
        [--device auto] [--store DIR] [--backend auto]

Every patient of each part's CACHE is predicted by each of the part's MODELs
(``inference.predict_patient``, as ``predict-openkbp`` without TTA); the mean of those doses becomes
the patient's ``Patient.prior_dose_gy`` and the patient is written into the new cache OUT_CACHE
(``cache.write_patients``, all parts in the order given). A network trained with the channel
``prior_dose`` (``features``; ``prior_dose_prev`` / ``_next`` for the neighbouring slices) on such a
cache refines the first stage's dose.

For an honest cascade the first-stage dose of a training patient must come from a network that did
not train on that patient: split the training patients into folds
(``crossfit_caches.py - TRAIN_CACHE OUT --folds K``), train one first-stage network per fold, and
give each fold's held-out patients that fold's network (one part per fold); the validation patients
get the mean of the K networks (one part, ``VAL_CACHE=F0+F1+...``). Predictions are kept in
``--store`` (one ``.npy`` per model and patient, as ``ensemble_eval.py`` keys them), so a patient
predicted in an earlier call is not predicted again (a second stage's predictions are also keyed by
the first-stage dose it was given: ``stored_prediction``). Nothing is overwritten: OUT_CACHE must be new.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ensemble_eval import STORE, store_folder
from MambaDoseLib import inference, weights
from MambaDoseLib.errors import InputError, MambaDoseError
from MambaDoseLib.features import PRIOR_DOSE, split_neighbour
from MambaDoseLib.patient import Patient
from MambaDoseTrainingLib.cache import list_cached, load_patient, write_patients
from MambaDoseTrainingLib.dataset import _write_atomic as write_atomic


def parse_part(text: str) -> tuple[Path, list[Path]]:
    """``"CACHE=A+B"`` -> (CACHE, [A, B]); SystemExit naming the option when malformed."""
    cache, sep, models = text.partition("=")
    paths = [Path(m) for m in models.split("+") if m]
    if not sep or not cache or not paths:
        raise SystemExit(f"--part {text!r}: expected CACHE=MODEL[+MODEL...]")
    return Path(cache), paths


def stored_prediction(folder: Path, card: dict, patient: Patient) -> Path:
    """Where a model's prediction of ``patient`` is kept: ``folder/<id>.npy``; for a model that
    reads a first-stage dose (a second stage) ``folder/prior-<digest>/<id>.npy``, keyed by that
    dose, since the same patient with another first stage is another prediction."""
    if not any(split_neighbour(name)[0] == PRIOR_DOSE for name in card["channels"]):
        return folder / f"{patient.patient_id}.npy"
    if patient.prior_dose_gy is None:
        raise InputError(
            f"patient {patient.patient_id}: the model of {folder} reads a first-stage dose; none given"
        )
    digest = hashlib.sha1(np.ascontiguousarray(patient.prior_dose_gy, np.float32).tobytes()).hexdigest()[:12]
    (folder / f"prior-{digest}").mkdir(exist_ok=True)
    return folder / f"prior-{digest}" / f"{patient.patient_id}.npy"


def prior_patients(
    parts: list[tuple[Path, list[Path]]], device: str, store: Path, log: logging.Logger, backend: str = "auto"
) -> Iterator[Patient]:
    """Each part's cached patients with the mean of its models' doses as ``prior_dose_gy``."""
    loaded: dict[Path, tuple] = {}
    for cache, models in parts:
        for path in models:
            if path not in loaded:
                model, card = weights.load_model(path, device=device, backend=backend)
                folder = store_folder(store, card, inference.card_views(card))
                folder.mkdir(parents=True, exist_ok=True)
                loaded[path] = (model, card, folder)
        for pid in list_cached(cache):
            patient = load_patient(cache, pid)
            doses = []
            for path in models:
                model, card, folder = loaded[path]
                stored = stored_prediction(folder, card, patient)
                if not stored.exists():
                    t0 = time.perf_counter()
                    dose = inference.predict_patient(model, card, patient, device=device)
                    write_atomic(stored, np.save, dose)  # a killed call leaves no truncated file
                    log.info("%s %s: %.1f s", path, pid, time.perf_counter() - t0)
                doses.append(np.load(stored))
            patient.prior_dose_gy = np.mean(doses, axis=0, dtype=np.float32)
            yield patient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_cache", type=Path)
    parser.add_argument("--part", action="append", required=True, help="CACHE=MODEL[+MODEL...]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--backend", default="auto", help="Mamba-2 scan backend (auto | torch | triton)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("cascade_priors")
    parts = [parse_part(text) for text in args.part]
    try:
        device = str(inference.resolve_device(args.device))
        sources = [
            f"{cache.resolve()} (prior: {'+'.join(str(m) for m in models)})" for cache, models in parts
        ]
        out = write_patients(
            prior_patients(parts, device, args.store, log, args.backend), args.out_cache, sources
        )
    except MambaDoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out['patients']} patients with a first-stage dose in {out['cache_dir']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
