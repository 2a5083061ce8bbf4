"""Score several weighted means of stored predictions in one pass over the patients (CPU).

    python benchmarks/ensemble_combos.py --model NAME=FILE[@VIEWS] ... --combo "LABEL=NAME*W+NAME+..." ...
        [--split DIR] [--store DIR] [--tta] [--model-tta NAME=FILE ...] [--model-tta-lr NAME=FILE ...] [--folder NAME=DIR ...]
        [--widen-ptv-hot-end] [--inside LABEL=OUT:IN ...] [--inside-ramp-mm R]

Every ``--model`` names a .safetensors file whose predictions ``benchmarks/ensemble_eval.py`` has
stored (same ``--store``, views and ``--tta``; a model without stored predictions for every patient
is refused by name: run ensemble_eval.py on it first). ``--tta`` reads every model's flip-TTA
predictions; ``--model-tta`` names one whose flip-TTA predictions are read whatever ``--tta`` says
(to mix networks predicted with and without the flip); ``--model-tta-lr`` one predicted with the
mirror alone (``ensemble_eval.py --tta --tta-flips lr``) where its card asks for four flips. ``--folder NAME=DIR`` names a folder of
predictions in the challenge's format (``pt_<N>.csv``, e.g. from ``mambadose predict-openkbp``, such
as the shipped ensemble's flip-TTA dose made on a GPU), read as a model's stored predictions are.
``--widen-ptv-hot-end`` scores every combo
a second time after ``calibration.widen_ptv_hot_tail`` (labelled "<label> widened").
``--inside LABEL=OUT:IN`` adds a combo whose dose is combo IN's inside the union of the
patient's structures (the OARs and PTVs the DVH score reads) and combo OUT's elsewhere, e.g. a
network trained for the DVH score where the DVH metrics are taken and the dose-score ensemble
around them (OUT and IN are --combo labels; widened like the others). ``--inside-ramp-mm R`` blends
IN into OUT linearly over the first R mm outside the structures (the weight of IN falls from 1 on
their edge to 0 at R mm; Euclidean distance, voxel spacing honoured), so the dose has no seam there;
the DVH score, read inside, is unchanged (``dvh_stream.blend_inside``, the step of ``--dvh-model``
in ``mambadose predict`` and ``predict-openkbp``).
``--roi-bias ROI:METRIC`` (e.g. ``RightParotid:mean``, ``PTV70:D_1``) prints, per combo, the mean
signed error (prediction - reference, Gy) of that DVH metric over the patients that have the ROI.
Every ``--combo`` is a voxel-wise weighted
mean of named models (``*W`` weighs a model W times; an ensemble file counts as its weight). Each
patient is read once and every combo scored on it with the challenge's definitions
(``metrics.score_prediction``); prints each combo's dose score and DVH score (per patient and
pooled), mean over patients. Choosing among combos on the validation set shares that set's
optimism. Tune on validation only.

Cross-fitted networks (benchmarks/crossfit_caches.py): ``--crossfit NAME=FILE0:FILE1:...`` with
``--folds OUT/folds.json`` names one network per fold, FILE<k> trained without fold k's validation
patients; NAME then stands for FILE<k>'s prediction on each patient of fold k (stored for those
patients only, e.g. by ``ensemble_eval.py FILE<k> --split OUT/fold<k>/heldout-pats``), so a combo of
such names scores every patient out of sample. With ``--folds`` every combo is also scored on each
fold's patients alone (folds without a patient in ``--split`` are left out).

``--paired A:B`` (combo labels) prints, per score, for how many patients B is better than A and the
mean per-patient difference B - A with its 95 % bootstrap interval over patients
(``metrics.bootstrap_mean_ci``): a paired comparison, far more precise than the two means apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ensemble_eval import (  # this folder is on sys.path when run as a script
    STORE,
    check_stored,
    named_model,
    parse_weighted,
)
from MambaDoseLib import calibration, dvh_stream, inference, metrics, openkbp, rois


def parse_combo(text: str, names: set[str]) -> tuple[str, list[tuple[str, float]]]:
    """``"LABEL=a*5+b"`` -> ``("LABEL", [("a", 5.0), ("b", 1.0)])``; names must be known."""
    label, sep, body = text.partition("=")
    if not sep or not label or not body:
        raise SystemExit(f"--combo {text!r}: expected LABEL=NAME[*W]+NAME[*W]...")
    return label, parse_weighted(body, names, f"--combo {label}")


def parse_inside(text: str, labels: set[str]) -> tuple[str, str, str]:
    """``"LABEL=OUT:IN"`` -> ``("LABEL", "OUT", "IN")``; OUT and IN must be --combo labels."""
    label, sep, body = text.partition("=")
    out, colon, in_ = body.partition(":")
    if not sep or not label or not colon or not {out, in_} <= labels or label in labels:
        raise SystemExit(
            f"--inside {text!r}: expected LABEL=OUT:IN, OUT and IN two --combo labels, LABEL a new one"
        )
    return label, out, in_


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=FILE.safetensors[@views]")
    parser.add_argument(
        "--crossfit", action="append", default=[], help="NAME=FILE0[@VIEWS]:FILE1[@VIEWS]:... (one per fold)"
    )
    parser.add_argument("--folds", type=Path, help="folds.json of benchmarks/crossfit_caches.py")
    parser.add_argument("--combo", action="append", required=True, help="LABEL=NAME*W+NAME...")
    parser.add_argument(
        "--paired", action="append", default=[], help="A:B, two combo labels (B - A per patient)"
    )
    parser.add_argument("--split", type=Path, default=Path("/tmp/openkbp/validation-pats"))
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--tta", action="store_true", help="the stored predictions made with flip TTA")
    parser.add_argument(
        "--model-tta",
        action="append",
        default=[],
        help="NAME=FILE[@views] whose stored predictions were made with flip TTA (whatever --tta says)",
    )
    parser.add_argument(
        "--model-tta-lr",
        action="append",
        default=[],
        help="NAME=FILE[@views] predicted with the left-right flip TTA alone (ensemble_eval.py --tta "
        "--tta-flips lr), for a network whose card asks for all four flips",
    )
    parser.add_argument(
        "--folder",
        action="append",
        default=[],
        help="NAME=DIR: a folder of pt_<N>.csv predictions (the challenge's format) used as a model",
    )
    parser.add_argument(
        "--widen-ptv-hot-end",
        action="store_true",
        help="also score every combo after calibration.widen_ptv_hot_tail (label + ' widened')",
    )
    parser.add_argument(
        "--inside",
        action="append",
        default=[],
        metavar="LABEL=OUT:IN",
        help="a combo with combo IN's dose inside the patient's structures and combo OUT's elsewhere",
    )
    parser.add_argument(
        "--inside-ramp-mm",
        type=float,
        default=0.0,
        metavar="R",
        help="blend --inside's IN into OUT over the first R mm outside the structures (default 0: a seam)",
    )
    parser.add_argument(
        "--roi-bias",
        action="append",
        default=[],
        metavar="ROI:METRIC",
        help="print each combo's mean signed error of this DVH metric (e.g. RightParotid:mean)",
    )
    args = parser.parse_args()
    bias_keys = []
    for spec in args.roi_bias:
        roi, sep, metric = spec.partition(":")
        organ_metric = roi in rois.OAR_NAMES and metric in ("mean", "D_0.1_cc")
        target_metric = roi in rois.TARGET_NAMES and metric in ("D_99", "D_95", "D_1")
        if not sep or not (organ_metric or target_metric):
            raise SystemExit(
                f"--roi-bias {spec!r}: expected ROI:METRIC, an OpenKBP organ with mean or D_0.1_cc, "
                "or a target with D_99, D_95 or D_1"
            )
        bias_keys.append((roi, metric))
    if not (args.model or args.model_tta or args.model_tta_lr or args.crossfit or args.folder):
        raise SystemExit("give at least one --model, --folder or --crossfit")
    if args.inside_ramp_mm < 0 or (args.inside_ramp_mm > 0 and not args.inside):
        raise SystemExit(f"--inside-ramp-mm {args.inside_ramp_mm}: a distance >= 0 for --inside combos")
    if args.crossfit and args.folds is None:
        raise SystemExit("--crossfit needs --folds")

    folders = openkbp.list_patient_dirs(args.split)
    fold_of: dict[str, int] = {}
    if args.folds is not None:
        fold_of = {pid: k for k, ids in enumerate(json.loads(args.folds.read_text())["folds"]) for pid in ids}
        outside = [f.name for f in folders if f.name not in fold_of]
        if outside:
            raise SystemExit(f"{args.folds}: no fold holds {', '.join(outside[:3])} of {args.split}")
    stores: dict[str, dict[str, Path]] = {}  # name -> patient id -> store folder of its prediction
    lr = inference.LR_FLIPS
    specs = [(m, args.tta, None) for m in args.model] + [(m, True, None) for m in args.model_tta]
    for spec, tta, flips in specs + [(m, True, lr) for m in args.model_tta_lr]:
        name, path, _, store, weight = named_model(spec, args.store, tta, flips)
        if weight != 1:
            raise SystemExit(f"--model {spec!r}: weights go in --combo (NAME*W), not in --model")
        if name in stores:
            raise SystemExit(f"--model {spec!r}: the name {name} is given twice")
        check_stored(f"{name} ({path})", store, folders)
        stores[name] = {f.name: store for f in folders}
    csv_names = set()
    for spec in args.folder:
        name, sep, folder_text = spec.partition("=")
        if not sep or not name or not folder_text:
            raise SystemExit(f"--folder {spec!r}: expected NAME=DIR")
        if name in stores:
            raise SystemExit(f"--folder {spec!r}: the name {name} is given twice")
        check_stored(f"--folder {spec!r}", Path(folder_text), folders, suffix=".csv")
        stores[name] = {f.name: Path(folder_text) for f in folders}
        csv_names.add(name)
    n_folds = len(set(fold_of.values()))
    for spec in args.crossfit:
        name, sep, files = spec.partition("=")
        files = files.split(":")
        if not sep or not name or len(files) != n_folds:
            raise SystemExit(
                f"--crossfit {spec!r}: expected NAME= and {n_folds} files, one per fold, joined by ':'"
            )
        if name in stores:
            raise SystemExit(f"--crossfit {spec!r}: the name {name} is given twice")
        stores[name] = {}
        for k, file in enumerate(files):
            _, path, _, store, weight = named_model(f"{name}={file}", args.store, args.tta)
            if weight != 1:
                raise SystemExit(f"--crossfit {spec!r}: weights go in --combo (NAME*W), not in --crossfit")
            held = [f for f in folders if fold_of[f.name] == k]
            check_stored(f"{name} fold {k} ({path})", store, held)
            stores[name].update({f.name: store for f in held})
    combos = [parse_combo(c, set(stores)) for c in args.combo]
    inside = [parse_inside(spec, {label for label, _ in combos}) for spec in args.inside]
    combos += [(label, [*dict(combos)[out], *dict(combos)[in_]]) for label, out, in_ in inside]
    inside_parts = {label: (out, in_) for label, out, in_ in inside}
    widened = {f"{label} widened" for label, _ in combos} if args.widen_ptv_hot_end else set()
    combos += [(f"{label} widened", parts) for label, parts in combos if f"{label} widened" in widened]
    labels = {label for label, _ in combos}
    pairs = [tuple(spec.split(":")) for spec in args.paired]
    for spec, pair in zip(args.paired, pairs, strict=True):
        if len(pair) != 2 or not set(pair) <= labels:
            raise SystemExit(f"--paired {spec!r}: expected A:B, two --combo labels")
    used = {n for _, parts in combos for n, _ in parts}

    scores: dict[str, list] = {label: [] for label, _ in combos}
    for folder in folders:
        patient = openkbp.read_patient(folder)
        ref = metrics.reference_dvh_metrics(patient)
        doses = {
            n: (
                openkbp.read_sparse_dose(stores[n][folder.name] / f"{folder.name}.csv")
                if n in csv_names
                else np.load(stores[n][folder.name] / f"{folder.name}.npy")
            )
            for n in used
        }
        means: dict[str, np.ndarray] = {}
        for label, parts in combos:
            base = label.removesuffix(" widened") if label in widened else label
            if base in means:
                mean = means[base]
            elif base in inside_parts:
                out, in_ = inside_parts[base]
                mean = dvh_stream.blend_inside(
                    means[out], means[in_], patient.structures, patient.possible_dose_mask,
                    patient.spacing_mm, args.inside_ramp_mm,
                )  # fmt: skip
            else:
                mean = np.average([doses[n] for n, _ in parts], axis=0, weights=[w for _, w in parts])
            means[base] = mean
            if label in widened:
                mean = calibration.widen_ptv_hot_tail(mean, patient.structures, patient.possible_dose_mask)
            scores[label].append(metrics.score_patient(mean, patient, ref))
        print(f"{folder.name} done", file=sys.stderr, flush=True)
    print(f"{len(folders)} patients of {args.split}")
    print(f"{'combo':40s} dose score  DVH score  DVH pooled  networks")
    for label, parts in combos:
        dose_mean, dvh_mean, pooled = metrics.score_summary(scores[label])
        networks = " + ".join(f"{n}*{w:g}" if w != 1 else n for n, w in parts)
        if label.removesuffix(" widened") in inside_parts:
            networks = "{} outside the structures, {} inside".format(
                *inside_parts[label.removesuffix(" widened")]
            )
        print(f"{label:40s} {dose_mean:10.4f} {dvh_mean:10.4f} {pooled:11.4f}  {networks}")
    for key in bias_keys:
        print(f"mean signed error of {key[0]} {key[1]} (prediction - reference):")
        for label, _ in combos:
            err = [pm[key] - rm[key] for *_, (pm, rm) in scores[label] if key in pm and key in rm]
            spread = f" +- {np.std(err):.3f}" if err else ""
            print(
                f"  {label:38s} {np.mean(err) if err else float('nan'):+8.3f}{spread} Gy  ({len(err)} patients)"
            )
    for k in range(n_folds):
        rows = [i for i, f in enumerate(folders) if fold_of[f.name] == k]
        if not rows:
            continue
        print(f"fold {k} only ({len(rows)} patients):")
        for label, _ in combos:
            dose_mean, dvh_mean, pooled = metrics.score_summary([scores[label][i] for i in rows])
            print(f"  {label:38s} {dose_mean:10.4f} {dvh_mean:10.4f} {pooled:11.4f}")
    for a, b in pairs:
        print(f"paired, {b} - {a}, per patient:")
        for i, name in enumerate(("dose score", "DVH score")):
            diff = np.array([sb[i] - sa[i] for sa, sb in zip(scores[a], scores[b], strict=True)])
            diff = diff[np.isfinite(diff)]
            low, high = metrics.bootstrap_mean_ci(diff)
            print(
                f"  {name}: {b} better for {int((diff < 0).sum())} of {diff.size} patients; "
                f"mean {diff.mean():+.4f} Gy, 95 % interval {low:+.4f} to {high:+.4f} Gy"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
