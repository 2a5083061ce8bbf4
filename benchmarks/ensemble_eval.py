"""Score several trained models and their voxel-wise mean on an OpenKBP split (CPU or GPU).

    python benchmarks/ensemble_eval.py MODEL[@VIEWS][*WEIGHT] ... [--split DIR] [--store DIR] [--prefix-means] [--tta [--tta-flips lr]]

Each MODEL is a .safetensors file with its card; ``@axial,coronal`` overrides the card's views;
``*3`` weighs the model three times in the means (an ensemble file of three members counts as
three networks). ``--prefix-means`` also scores the weighted mean of the first k models for every
k (list the models best first for a greedy selection). ``--subsets K`` then scores the equal-weight
mean of every K of the models on the dose score and prints the best five with their DVH scores
(an exhaustive choice of K members on the validation set: it shares that set's optimism).
Every model predicts every patient once through ``inference.predict_patient`` (kept in
``--store`` as .npy, reused by later calls); then the script prints, for each model alone and for
the mean of all of them, the challenge's dose score and DVH score (``metrics``, mean over
patients; DVH also pooled). ``--tta``: every model with the flip TTA (as ``predict-openkbp
--tta``: the left-right mirror, all four in-plane flips for a network trained with the
anterior-posterior flip too). Tune on validation only.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
from MambaDoseLib import inference, metrics, openkbp, weights


def store_folder(
    root: Path, card: dict, views: tuple[str, ...], tta: bool = False, flips: tuple | None = None
) -> Path:
    """Where a model's predictions (one ``pt_<N>.npy`` per patient) are kept under ``root``: keyed
    by its weights' SHA-256, the views and the TTA (stored apart from those without; with the flips
    when they are more than the mirror: ``flips``, default the card's, ``inference.card_tta_flips``)."""
    key = f"{card['sha256']}{views}{'tta' if tta else ''}"
    flips = inference.card_tta_flips(card) if flips is None else flips
    if tta and flips != inference.LR_FLIPS:  # networks trained with more flips: keyed by them too
        key += str(flips)
    return root / hashlib.sha1(key.encode()).hexdigest()[:12]


#: Where the predictions are kept, one folder per model (``store_folder``); shared by the scripts
#: that read them back (paired_compare.py, ensemble_combos.py, ensemble_greedy.py).
STORE = Path("/tmp/mambadose-ensemble")


def check_stored(name: str, store: Path, folders: list[Path], suffix: str = ".npy") -> None:
    """Exit naming the model and the first patients when ``store`` lacks a prediction of one of
    ``folders`` (run ensemble_eval.py on the model first); ``suffix`` ".csv" for a folder of
    submission files."""
    missing = [f.name for f in folders if not (store / f"{f.name}{suffix}").exists()]
    if missing:
        raise SystemExit(f"{name}: no stored prediction for {', '.join(missing[:3])} ... in {store}")


def parse_weighted(text: str, names: set[str], where: str) -> list[tuple[str, float]]:
    """``"a*5+b"`` -> ``[("a", 5.0), ("b", 1.0)]``: names must be in ``names``, weights > 0
    (``where`` starts the error message, e.g. the command-line option and its value)."""
    parts = []
    for term in text.split("+"):
        name, _, weight = term.strip().partition("*")
        if name not in names:
            raise SystemExit(f"{where}: no --model named {name!r}")
        w = float(weight or 1)
        if not w > 0:
            raise SystemExit(f"{where}: weight of {name} must be > 0, got {weight}")
        parts.append((name, w))
    return parts


def named_model(
    spec: str, root: Path, tta: bool = False, flips: tuple | None = None
) -> tuple[str, Path, dict, Path, float]:
    """``NAME=FILE[@VIEWS][*W]`` -> (name, file, card, store folder of its predictions, weight W)
    (benchmarks/ensemble_combos.py, ensemble_greedy.py); ``flips`` as in ``store_folder``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"--model {spec!r}: expected NAME=FILE[@VIEWS][*W]")
    rest, _, weight = rest.partition("*")
    path, _, views = rest.partition("@")
    card = weights.read_card(path)
    views = inference.parse_views(views) if views else inference.card_views(card)
    return name, Path(path), card, store_folder(root, card, views, tta, flips), float(weight or 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="MODEL.safetensors[@view,view]")
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="every model with the flip TTA (the mirror; all four flips for networks trained with them)",
    )
    parser.add_argument(
        "--tta-flips",
        choices=("card", "lr"),
        default="card",
        help="with --tta: the flips the card asks for (default) or the left-right mirror alone",
    )
    parser.add_argument("--prefix-means", action="store_true", help="score the mean of the first k, every k")
    parser.add_argument("--subsets", type=int, default=0, metavar="K", help="score every K of the models")
    args = parser.parse_args()

    members = []
    member_weights = []
    for spec in args.models:
        spec, _, weight = spec.partition("*")
        member_weights.append(float(weight or 1))
        path, _, views = spec.partition("@")
        model, card = weights.load_model(path, device=args.device)
        views = inference.parse_views(views) if views else inference.card_views(card)
        flips = inference.card_tta_flips(card) if args.tta_flips == "card" else inference.LR_FLIPS
        store = store_folder(args.store, card, views, args.tta, flips)
        store.mkdir(parents=True, exist_ok=True)
        members.append(
            (
                f"{Path(path).parent.name}/{Path(path).name}@{','.join(views)}",
                model,
                card,
                views,
                store,
                flips,
            )
        )

    scores: dict[str, list] = {}  # name -> per patient metrics.score_prediction
    for folder in openkbp.list_patient_dirs(args.split):
        patient = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(patient)
        doses = []
        for name, model, card, views, store, flips in members:
            stored = store / f"{folder.name}.npy"
            if not stored.exists():
                t0 = time.perf_counter()
                dose = inference.predict_patient(
                    model, card, patient, device=args.device, views=views, tta=args.tta, tta_flips=flips
                )
                np.save(stored, dose)
                print(f"{name} {folder.name}: {time.perf_counter() - t0:.1f} s", flush=True)
            doses.append((name, np.load(stored)))
        means = []
        counts = range(2, len(doses) + 1) if args.prefix_means else [len(doses)] if len(doses) > 1 else []
        for k in counts:
            label = "mean of all" if k == len(doses) else f"mean of first {k}"
            means.append((label, np.average([d for _, d in doses[:k]], axis=0, weights=member_weights[:k])))
        doses += means
        for name, dose in doses:
            scores.setdefault(name, []).append(metrics.score_patient(dose, patient, ref))
    n = len(next(iter(scores.values())))
    print(f"{n} patients of {args.split}")
    print(f"{'model':60s} dose score  DVH score  DVH pooled")
    for name, values in scores.items():
        dose_mean, dvh_mean, pooled = metrics.score_summary(values)
        print(f"{name:60s} {dose_mean:10.4f} {dvh_mean:10.4f} {pooled:11.4f}")
    if args.subsets:
        score_subsets(args.split, [(m[0], m[4]) for m in members], args.subsets)
    return 0


def score_subsets(split: Path, members: list[tuple[str, Path]], k: int, best: int = 5) -> None:
    """Dose score of the mean of every ``k`` members (stored predictions), then the DVH scores of
    the ``best`` subsets; printed."""
    combos = list(itertools.combinations(range(len(members)), k))
    dose = np.zeros(len(combos))
    folders = openkbp.list_patient_dirs(split)
    for folder in folders:
        patient = openkbp.read_patient(folder)
        stored = np.stack([np.load(store / f"{folder.name}.npy") for _, store in members])
        for i, combo in enumerate(combos):
            mean = stored[list(combo)].mean(axis=0)
            dose[i] += metrics.dose_score(mean, patient.dose_gy, patient.possible_dose_mask) / len(folders)
    top = np.argsort(dose)[:best]
    pairs: dict[int, list] = {i: [] for i in top}
    for folder in folders:
        patient = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(patient)
        stored = [np.load(store / f"{folder.name}.npy") for _, store in members]
        for i in top:
            mean = np.mean([stored[j] for j in combos[i]], axis=0)
            pairs[i].append(
                (metrics.openkbp_dvh_metrics(mean, patient.structures, patient.voxel_volume_mm3), ref)
            )
    print(f"best {best} of {len(combos)} subsets of {k} (dose score; DVH per patient, pooled):")
    for i in top:
        dvh = np.nanmean([metrics.dvh_score(p, r) for p, r in pairs[i]])
        names = " + ".join(members[j][0] for j in combos[i])
        print(f"{dose[i]:.4f} {dvh:.4f} {metrics.dvh_score_pooled(pairs[i]):.4f}  {names}")


if __name__ == "__main__":
    raise SystemExit(main())
