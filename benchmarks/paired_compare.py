"""Per-patient comparison of two predictions already in ``benchmarks/ensemble_eval.py``'s store: for
how many validation patients is B better than A on the dose score and on the DVH score, and by how
much on average (B - A). Each side is a weighted mean of stored models, as ensemble_eval scores it.

    python benchmarks/paired_compare.py --a ENSEMBLE5.safetensors*5 --b ENSEMBLE5.safetensors*5 G95.safetensors

Run ensemble_eval.py on the same models first (it fills the store).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ensemble_eval import STORE, store_folder  # this folder is on sys.path when run as a script
from MambaDoseLib import inference, metrics, openkbp, weights


def _members(specs: list[str], store: Path) -> list[tuple[Path, float]]:
    out = []
    for spec in specs:
        path, _, weight = spec.partition("*")
        card = weights.read_card(path)
        out.append((store_folder(store, card, inference.card_views(card)), float(weight or 1)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", required=True, help="MODEL[*WEIGHT] ...")
    parser.add_argument("--b", nargs="+", required=True, help="MODEL[*WEIGHT] ...")
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--store", type=Path, default=STORE)
    args = parser.parse_args()
    sides = [_members(args.a, args.store), _members(args.b, args.store)]
    scores = []  # (patient, side) -> (dose, dvh)
    for folder in openkbp.list_patient_dirs(args.split):
        p = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(p)
        row = []
        for members in sides:
            dose = np.average(
                [np.load(store / f"{folder.name}.npy") for store, _ in members], axis=0,
                weights=[w for _, w in members],
            )  # fmt: skip
            s = metrics.score_patient(dose, p, ref)
            row.append(s[:2])
        scores.append(row)
    a = np.array([r[0] for r in scores])
    b = np.array([r[1] for r in scores])
    n = len(scores)
    for i, name in enumerate(("dose score", "DVH score")):
        diff = b[:, i] - a[:, i]
        ok = np.isfinite(diff)
        print(
            f"{name}: B better for {int((diff[ok] < 0).sum())} of {int(ok.sum())} patients; "
            f"mean B - A {diff[ok].mean():+.4f} Gy (sd {diff[ok].std():.4f})"
        )
    print(f"{n} patients of {args.split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
