"""``mambadose predict``: predict the dose for a patient's CT and structures (research prediction).

    mambadose predict --ct ct.nii.gz --structures masks/ --out result/ [--rx PTV_high=70] [--tta]

Writes into --out: dose.nii.gz (Gy, on the CT's grid), dvh_metrics.csv, dvh.png,
isodose_{axial,coronal,sagittal}.png and summary.json. An --out folder that already holds results
is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_arguments, dvh_stream_arguments

HELP = "predict the dose for a CT + structures (NIfTI/NRRD/DICOM) and write dose, DVH metrics and figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ct", required=True, type=Path, help="CT in HU: NIfTI/NRRD/MetaImage file or DICOM series folder"
    )
    parser.add_argument(
        "--structures",
        required=True,
        type=Path,
        help="folder of one mask file per structure (name = file name), or one label map file (with --labels)",
    )
    parser.add_argument(
        "--labels", type=Path, help="label table for a label map: 'value name' lines or JSON {value: name}"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--rx",
        action="append",
        default=[],
        metavar="NAME=GY",
        help="prescription of a target structure (repeatable); makes NAME a target, e.g. --rx PTV_high=70",
    )
    add_model_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..inference import parse_views
    from ..names import parse_rx
    from ..predict import check_output_dir, load_ct, load_structures

    dvh_model, dvh_weight = dvh_stream_arguments(args)
    check_output_dir(args.out, args.overwrite)
    rx = parse_rx(args.rx)
    ct = load_ct(args.ct)
    structures = load_structures(args.structures, args.labels)
    inputs = {
        "ct": str(args.ct),
        "structures": str(args.structures),
        "labels": str(args.labels) if args.labels else None,
        "rx_gy": rx,
    }
    predict_and_write(
        ct,
        structures,
        args.out,
        rx=rx,
        model_path=args.model,
        device=args.device,
        tta=args.tta,
        widen_ptv_hot_end=args.widen_ptv_hot_end,
        dvh_model_path=dvh_model,
        dvh_weight=dvh_weight if dvh_model is not None else None,
        views=parse_views(args.views) if args.views else None,
        overwrite=args.overwrite,
        progress_bar=not args.no_progress,
        inputs=inputs,
    )
    return 0


def predict_and_write(
    ct,
    structures,
    out_dir: Path,
    *,
    rx: dict[str, float] | None = None,
    model_path: Path | None = None,
    device: str = "auto",
    tta: bool = False,
    widen_ptv_hot_end: bool = False,
    dvh_model_path: Path | None = None,
    dvh_weight: float | None = None,
    views: list[str] | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
    inputs: dict | None = None,
) -> list[Path]:
    """Run ``predict.predict_dose`` with a tqdm bar, write the outputs and print what was done."""
    from tqdm import tqdm

    from .. import RESEARCH_DISCLAIMER
    from ..predict import predict_dose, write_outputs

    bars: list[tqdm] = []  # made at the first report, so its clock starts with the model

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(
                tqdm(total=total, unit="slice", desc="predicting", disable=not progress_bar, leave=False)
            )
        bars[0].update(done - bars[0].n)

    try:
        result = predict_dose(
            ct,
            structures,
            prescriptions=rx,
            model_path=model_path,
            device=device,
            tta=tta,
            widen_ptv_hot_end=widen_ptv_hot_end,
            dvh_model_path=dvh_model_path,
            dvh_weight=dvh_weight,
            views=views,
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    written = write_outputs(result, out_dir, overwrite=overwrite, inputs=inputs)
    print_summary(result, written)
    print(RESEARCH_DISCLAIMER)
    return written


def print_summary(result, written: list[Path]) -> None:
    """The structure mapping, the ignored structures, the timing and the files written."""
    print("structures used (patient name -> model ROI):")
    for name, roi in result.roi_map.items():
        rx = result.prescriptions.get(name)
        print(f"  {name} -> {roi}" + (f" ({rx:g} Gy)" if rx is not None else ""))
    if result.unmatched:
        print("structures ignored:")
        for name, reason in result.unmatched.items():
            print(f"  {name}: {reason}")
    print(
        f"predicted on {result.device} in {result.timings['total']:.1f} s; max dose {result.dose.array.max():.1f} Gy"
    )
    if result.dvh_model_path is not None:
        print(f"inside the structures {result.dvh_weight:.3g} of the dose from {result.dvh_model_path}")
    print("wrote:")
    for path in written:
        print(f"  {path}")
