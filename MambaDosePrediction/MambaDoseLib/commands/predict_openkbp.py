"""``mambadose predict-openkbp PATIENTS_DIR OUT_DIR``: predict every OpenKBP patient of a folder.

Writes ``OUT_DIR/pt_<N>.csv`` in the challenge's submission format (sparse dose, zero outside the
possible-dose mask), ready for ``mambadose evaluate``, on each patient's own grid (a model trained
with ``--inplane-spacing`` predicts on its grid and the dose comes back: ``inference.predict_patient``).
The same weights run on CPU and GPU. ``OUT_DIR/predict_openkbp.json`` records what made the
predictions (the weights' SHA-256, TTA, views, DVH stream, widening), so that ``--resume`` can
finish a run that was stopped (the shipped ensemble takes about a minute a patient on two CPU
cores) without mixing in predictions made another way.
The predicted doses are model predictions for research, not deliverable plans.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .common import add_model_arguments, dvh_stream_arguments

HELP = "predict the dose of every OpenKBP patient folder (pt_*) and write submission CSVs"
#: What made the predictions in OUT_DIR (see the module's docstring).
MANIFEST_NAME = "predict_openkbp.json"
MANIFEST_FORMAT = "mambadose-predict-openkbp/1"
#: The manifest's entries that decide the dose: ``--resume`` goes on only where they agree.
_SAME_FOR_RESUME = ("model_sha256", "tta", "views", "widen_ptv_hot_end", "dvh_model_sha256", "dvh_weight")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "patients_dir", type=Path, metavar="PATIENTS_DIR", help="OpenKBP split folder (pt_*/)"
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for pt_<N>.csv predictions")
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="slices per batch (default 16)"
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace existing pt_*.csv in OUT_DIR")
    again.add_argument(
        "--resume",
        action="store_true",
        help=f"keep the pt_*.csv already in OUT_DIR and predict only the missing patients; refused "
        f"unless OUT_DIR's {MANIFEST_NAME} shows they were made the same way (weights, TTA, views, "
        "DVH stream, widening)",
    )


def _check_outputs(out_paths: list[Path], overwrite: bool, resume: bool = False) -> None:
    from MambaDoseLib.errors import InputError

    existing = [p.name for p in out_paths if p.exists()]
    if existing and not (overwrite or resume):
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise InputError(
            f"{out_paths[0].parent}: {len(existing)} prediction(s) already exist ({shown}); "
            "pass --overwrite to replace them, or --resume to predict only the missing ones"
        )


def run_manifest(model_path: Path, tta: bool, views, widen: bool, stream) -> dict:
    """What makes the predictions of one run (written as OUT_DIR's manifest)."""
    from MambaDoseLib import RESEARCH_DISCLAIMER
    from MambaDoseLib.weights import file_sha256

    return {
        "format": MANIFEST_FORMAT,
        "model": str(model_path),
        "model_sha256": file_sha256(model_path),
        "tta": bool(tta),
        "views": list(views),
        "widen_ptv_hot_end": bool(widen),
        "dvh_model": None if stream is None else str(stream.path),
        "dvh_model_sha256": None if stream is None else file_sha256(stream.path),
        "dvh_weight": None if stream is None else float(stream.weight),
        "disclaimer": RESEARCH_DISCLAIMER,
    }


def check_resume(out_dir: Path, manifest: dict, existing: int) -> None:
    """InputError unless the predictions already in ``out_dir`` were made as ``manifest`` says."""
    from MambaDoseLib.errors import InputError

    path = out_dir / MANIFEST_NAME
    if not existing:
        return
    if not path.is_file():
        raise InputError(
            f"{out_dir}: {existing} prediction(s) but no {MANIFEST_NAME} saying how they were made; "
            "--resume cannot tell whether they match (pass --overwrite to replace them)"
        )
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc}); pass --overwrite to start again") from exc
    if not isinstance(before, dict) or before.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not a {MANIFEST_FORMAT} manifest; pass --overwrite to start again")
    differ = [key for key in _SAME_FOR_RESUME if before.get(key) != manifest[key]]
    if differ:
        shown = ", ".join(f"{key} {before.get(key)!r} -> {manifest[key]!r}" for key in differ)
        raise InputError(
            f"{out_dir}: the predictions there were made another way ({shown}); --resume would mix "
            "them; pass --overwrite, or another OUT_DIR"
        )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from MambaDoseLib import RESEARCH_DISCLAIMER, calibration, dvh_stream, inference, openkbp, report, weights
    from MambaDoseLib.errors import InputError

    dvh_path, dvh_weight = dvh_stream_arguments(args)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    folders = openkbp.list_patient_dirs(args.patients_dir)
    if not folders:
        raise InputError(f"{args.patients_dir}: no pt_* patient folders found")
    out_paths = [args.out_dir / f"{folder.name}.csv" for folder in folders]
    _check_outputs(out_paths, args.overwrite, args.resume)

    device = inference.resolve_device(args.device)
    model_path = weights.model_path_from_arg(args.model)
    model, card = weights.load_model(model_path, device=device)
    views = inference.parse_views(args.views) if args.views else inference.card_views(card)
    inference.check_slab_views(model, views)
    log.info(
        "model %s on device %s (%s), views %s", model_path, device, _device_name(device), ",".join(views)
    )
    stream = None if dvh_path is None else dvh_stream.load(dvh_path, device, dvh_weight)
    if stream is not None:
        log.info("DVH stream %s inside the structures, weight %.3g", stream.path, stream.weight)
    log.info(RESEARCH_DISCLAIMER)
    manifest = run_manifest(model_path, args.tta, views, args.widen_ptv_hot_end, stream)
    todo = list(zip(folders, out_paths, strict=True))
    if args.resume:
        check_resume(args.out_dir, manifest, sum(p.exists() for p in out_paths))
        todo = [(folder, out_path) for folder, out_path in todo if not out_path.exists()]
        log.info("--resume: %d of %d patient(s) left to predict", len(todo), len(folders))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2) + "\n"
    report.atomic_write(args.out_dir / MANIFEST_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    times = []
    for folder, out_path in tqdm(todo, desc="predict", unit="patient"):
        start = time.perf_counter()
        patient = openkbp.read_patient(folder)
        dose_gy = inference.predict_patient(
            model, card, patient, device=device, tta=args.tta, batch_size=args.batch_size, views=views
        )
        if stream is not None:
            dose_gy = dvh_stream.apply(
                stream, dose_gy, patient, device=device, tta=args.tta, batch_size=args.batch_size
            )
        if args.widen_ptv_hot_end:
            dose_gy = calibration.widen_ptv_hot_tail(dose_gy, patient.structures, patient.possible_dose_mask)
        openkbp.write_sparse_dose(out_path, dose_gy)
        times.append(time.perf_counter() - start)
        log.info("%s: %.2f s (read + predict + write) -> %s", folder.name, times[-1], out_path)
    if times:
        log.info(
            "%d patient(s) on %s: %.2f s per patient on average", len(times), device, sum(times) / len(times)
        )
    return 0


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
