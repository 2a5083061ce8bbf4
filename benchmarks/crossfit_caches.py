"""Cache folders for cross-fitted training: the validation patients split into K folds, and for each
fold k a training cache of every training patient plus the validation patients outside fold k,
beside a held-out cache of fold k's patients (``cache.combine_caches``; files hard-linked).

    python benchmarks/crossfit_caches.py TRAIN_CACHE VAL_CACHE OUT [--folds 2] [--openkbp-split DIR]

Validation patient i (in the cache's order, pt_201 before pt_210) goes to fold i mod K. Writes
``OUT/fold<k>/train``, ``OUT/fold<k>/heldout`` and ``OUT/folds.json`` (the ids of every fold);
``--openkbp-split`` also writes ``OUT/fold<k>/heldout-pats``, links to the held-out patients' OpenKBP
folders, for ``mambadose predict-openkbp`` / ``evaluate`` on them. A network trained on fold k's
training cache and scored on its held-out patients is out of sample there; predictions of the K
folds together cover every validation patient once (cross-fitting), which estimates what networks
trained on more patients give, on patients none of them saw. Nothing in OUT is overwritten.

TRAIN_CACHE ``-``: no training patients are added, so fold k's training cache holds VAL_CACHE's
other folds alone: K out-of-fold networks on one split, e.g. a cascade's first stage on the
training patients (``benchmarks/cascade_priors.py``; then VAL_CACHE is the training cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from MambaDoseLib.errors import InputError
from MambaDoseTrainingLib.cache import combine_caches, list_cached


def fold_ids(ids: list[str], folds: int) -> list[list[str]]:
    """``ids`` dealt round-robin into ``folds`` lists (patient i -> fold i mod folds)."""
    if folds < 2 or folds > len(ids):
        raise ValueError(f"--folds must be between 2 and the {len(ids)} validation patients, got {folds}")
    return [ids[k::folds] for k in range(folds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_cache", help="training cache, or - for none")
    parser.add_argument("val_cache")
    parser.add_argument("out", type=Path)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--openkbp-split", type=Path, help="the validation split's pt_<N> folders")
    args = parser.parse_args(argv)
    try:
        val_ids = list_cached(args.val_cache)
        folds = fold_ids(val_ids, args.folds)
        if (args.out / "folds.json").exists():
            raise InputError(f"{args.out / 'folds.json'}: already exists; choose a new folder")
        if args.openkbp_split is not None:  # every patient folder checked before anything is written
            for pid in val_ids:
                if not (args.openkbp_split / pid).is_dir():
                    raise InputError(f"{args.openkbp_split / pid}: no such patient folder in --openkbp-split")
        for k, held in enumerate(folds):
            rest = [pid for pid in val_ids if pid not in held]
            fold = args.out / f"fold{k}"
            extra = [] if args.train_cache == "-" else [(args.train_cache, None)]
            train = combine_caches(extra + [(args.val_cache, rest)], fold / "train")
            combine_caches([(args.val_cache, held)], fold / "heldout")
            if args.openkbp_split is not None:
                pats = fold / "heldout-pats"
                pats.mkdir(parents=True, exist_ok=True)
                for pid in held:
                    (pats / pid).unlink(missing_ok=True)  # a link left by an interrupted call
                    os.symlink((args.openkbp_split / pid).resolve(), pats / pid)
            print(f"fold{k}: {len(held)} held out ({', '.join(held)}); training cache of "
                  f"{train['patients']} patients", flush=True)  # fmt: skip
        (args.out / "folds.json").write_text(json.dumps({"folds": folds}, indent=1) + "\n")
    except (InputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
