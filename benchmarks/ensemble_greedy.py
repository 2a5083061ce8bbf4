"""Greedy choice of ensemble members from stored predictions, under a file-size budget (CPU).

    python benchmarks/ensemble_greedy.py --model NAME=FILE[@VIEWS][*W] ... [--start NAME ...]
        [--budget-mb 50] [--split DIR] [--store DIR] [--halves]

Every ``--model`` names a .safetensors file whose predictions ``benchmarks/ensemble_eval.py`` has
stored (same ``--store`` and views); ``*W`` makes it count W networks in the mean (an ensemble
file: its size). The search starts from the ``--start`` members (default none) and adds, one at a
time and without repeats, the model whose addition gives the lowest dose score + DVH score (mean
over patients of the challenge's per-patient scores, ``metrics.score_prediction``), as long as the
members' float16 file sizes (a float32 file counts half its size) stay within ``--budget-mb`` (MB = 10^6
bytes; the shipped ensemble file must stay under 50 MB). Prints every step with its dose score,
DVH score (per patient and pooled).

``--halves``: the choice made on one half of the patients (alternate patients in list order) is
scored on the other half as well, both ways round, to show how much of a greedy gain is the
selection fitting the patients it was chosen on. ``--compare "a*5+b"`` scores a fixed mean of named
models (e.g. the shipped ensemble's members) on all patients and on each half, for reference. Tune on validation only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ensemble_eval import (  # this folder is on sys.path when run as a script
    STORE,
    check_stored,
    named_model,
    parse_weighted,
)
from MambaDoseLib import metrics, openkbp


class Patients:
    """The patients' reference data and every model's stored prediction, kept as the voxels of the
    possible-dose mask and the structures (the predictions are 0 elsewhere; checked)."""

    def __init__(self, split: Path, stores: dict[str, Path]) -> None:
        self.items = []
        folders = openkbp.list_patient_dirs(split)
        for name, store in stores.items():
            check_stored(name, store, folders)
        for folder in folders:
            p = openkbp.read_patient(folder)
            keep = p.possible_dose_mask.copy()
            for mask in p.structures.values():
                keep |= mask
            preds = {}
            for name, store in stores.items():
                dose = np.load(store / f"{folder.name}.npy")
                if np.any(dose[~keep]):
                    raise SystemExit(
                        f"{name}: {folder.name} has dose outside the possible-dose mask and structures"
                    )
                preds[name] = dose[keep].astype(np.float32)
            ref = metrics.reference_dvh_metrics(p)
            self.items.append((folder.name, p, keep, ref, preds))
            print(f"read {folder.name}", flush=True)

    def score(self, members: dict[str, float], which: list[int]) -> tuple[float, float, float]:
        """(dose score, DVH score, pooled DVH score) of the weighted mean of ``members`` over the
        patients at indices ``which``."""
        results = []
        total = sum(members.values())
        for i in which:
            _, p, keep, ref, preds = self.items[i]
            mean = sum(preds[n] * (w / total) for n, w in members.items())
            full = np.zeros(p.dose_gy.shape, np.float32)
            full[keep] = mean
            results.append(metrics.score_patient(full, p, ref))
        return metrics.score_summary(results)


def greedy(
    data: Patients,
    pool: dict[str, tuple[float, float]],
    start: list[str],
    budget: float,
    which: list[int],
) -> list[tuple[list[str], tuple[float, float, float]]]:
    """Forward selection on the patients ``which``: the path of (members, scores), one per step."""
    chosen = list(start)
    path = [(list(chosen), data.score({n: pool[n][0] for n in chosen}, which))] if chosen else []
    while True:
        size = sum(pool[n][1] for n in chosen)
        best = None
        for name, (_, mb) in pool.items():
            if name in chosen or size + mb > budget:
                continue
            s = data.score({n: pool[n][0] for n in [*chosen, name]}, which)
            if best is None or s[0] + s[1] < best[1][0] + best[1][1]:
                best = (name, s)
        if best is None:
            return path
        chosen.append(best[0])
        path.append((list(chosen), best[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=FILE[@views][*W]")
    parser.add_argument("--start", action="append", default=[], help="a member to start from")
    parser.add_argument("--budget-mb", type=float, default=50.0)
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--halves", action="store_true", help="choose on one half, score on the other")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="NAME*W+NAME...",
        help="also score this fixed mean of named models (all patients, and each half with --halves)",
    )  # fmt: skip
    args = parser.parse_args()

    pool: dict[str, tuple[float, float]] = {}  # name -> (weight, MB)
    stores: dict[str, Path] = {}
    for spec in args.model:
        name, path, card, stores[name], weight = named_model(spec, args.store)
        size = path.stat().st_size / 1e6
        if card.get("storage_dtype") in (None, "float32"):
            size /= 2  # shipped as float16
        pool[name] = (weight, size)
    for name in args.start:
        if name not in pool:
            raise SystemExit(f"--start {name}: no --model of that name")
    if sum(pool[name][1] for name in args.start) > args.budget_mb:
        raise SystemExit(f"--start members take more than --budget-mb {args.budget_mb:g} MB")
    data = Patients(args.split, stores)
    n = len(data.items)

    def show(title: str, path, other=None) -> None:
        print(title)
        for members, (dose, dvh, pooled) in path:
            size = sum(pool[m][1] for m in members)
            line = f"  {dose:.4f} {dvh:.4f} ({pooled:.4f})"
            if other is not None:
                o = data.score({m: pool[m][0] for m in members}, other)
                line += f"   other half {o[0]:.4f} {o[1]:.4f} ({o[2]:.4f})"
            print(f"{line}   {size:5.1f} MB  {' + '.join(members)}", flush=True)

    halves = [("even", list(range(0, n, 2))), ("odd", list(range(1, n, 2)))] if args.halves else []
    for text in args.compare:
        members = dict(parse_weighted(text, set(pool), f"--compare {text}"))
        for label, which in [("all", list(range(n))), *halves]:
            dose, dvh, pooled = data.score(members, which)
            print(f"compare {text} on {label} patients: {dose:.4f} {dvh:.4f} ({pooled:.4f})", flush=True)
    print("dose score, DVH score (pooled) of each step; members in order of choice")
    show(f"all {n} patients:", greedy(data, pool, args.start, args.budget_mb, list(range(n))))
    if halves:
        (_, even), (_, odd) = halves
        show("chosen on the even patients:", greedy(data, pool, args.start, args.budget_mb, even), odd)
        show("chosen on the odd patients:", greedy(data, pool, args.start, args.budget_mb, odd), even)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
