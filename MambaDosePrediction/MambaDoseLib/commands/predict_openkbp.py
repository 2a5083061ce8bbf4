"""``mambadose predict-openkbp PATIENTS_DIR OUT_DIR``: predict every OpenKBP patient of a folder.

Writes ``OUT_DIR/pt_<N>.csv`` in the challenge's submission format (sparse dose, zero outside the
possible-dose mask), ready for ``mambadose evaluate``, on each patient's own grid (a model trained
with ``--inplane-spacing`` predicts on its grid and the dose comes back: ``inference.predict_patient``).
The same weights run on CPU and GPU.
The predicted doses are model predictions for research, not deliverable plans.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .common import add_model_arguments, dvh_stream_arguments

HELP = "predict the dose of every OpenKBP patient folder (pt_*) and write submission CSVs"

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
    parser.add_argument("--overwrite", action="store_true", help="replace existing pt_*.csv in OUT_DIR")


def _check_outputs(out_paths: list[Path], overwrite: bool) -> None:
    from MambaDoseLib.errors import InputError

    existing = [p.name for p in out_paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise InputError(
            f"{out_paths[0].parent}: {len(existing)} prediction(s) already exist ({shown}); "
            "pass --overwrite to replace them"
        )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from MambaDoseLib import RESEARCH_DISCLAIMER, calibration, dvh_stream, inference, openkbp, weights
    from MambaDoseLib.errors import InputError

    dvh_path, dvh_weight = dvh_stream_arguments(args)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    folders = openkbp.list_patient_dirs(args.patients_dir)
    if not folders:
        raise InputError(f"{args.patients_dir}: no pt_* patient folders found")
    out_paths = [args.out_dir / f"{folder.name}.csv" for folder in folders]
    _check_outputs(out_paths, args.overwrite)

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
    args.out_dir.mkdir(parents=True, exist_ok=True)

    times = []
    for folder, out_path in tqdm(list(zip(folders, out_paths, strict=True)), desc="predict", unit="patient"):
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
    log.info(
        "%d patient(s) on %s: %.2f s per patient on average", len(times), device, sum(times) / len(times)
    )
    return 0


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
