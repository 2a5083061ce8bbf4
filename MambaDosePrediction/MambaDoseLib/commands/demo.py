"""``mambadose demo``: predict the dose for the synthetic head-and-neck phantom with the shipped model.

Builds the phantom (``phantom.make_phantom``), writes it as a clinic would hand it over (CT in HU
as NIfTI in the usual axial orientation, one NIfTI mask per structure, PTVs named ``PTV_<Gy>``)
into ``<out>/input/``, runs the same code as ``mambadose predict`` with the shipped weights
(``weights.default_model_path()``) and writes the results into ``<out>`` (default ./mambadose-demo).

Re-running: a folder that holds only what an earlier demo wrote (it carries the marker file
``.mambadose-demo``) is replaced without asking; any other non-empty folder is refused unless
--overwrite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "predict the dose for a synthetic head-and-neck phantom with the shipped model (first thing to try)"

DEFAULT_OUT = Path("mambadose-demo")
MARKER = ".mambadose-demo"
INPUT_DIR = "input"
#: the demo phantom: 128 x 128 axial, 64 slices of 2.5 mm (160 mm around the targets) keeps the demo short
DEMO_SHAPE: tuple[int, int, int] = (128, 128, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="weights file (default: the shipped model; 'ensemble': the shipped ensemble)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model"
    )
    parser.add_argument("--tta", action="store_true", help="average over left-right flipped inputs")
    parser.add_argument(
        "--spacing-mm",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="write the phantom CT at this voxel size (mm) instead of the phantom's own (3.906 3.906 2.5)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=DEMO_SHAPE[2],
        help=f"phantom slices of 2.5 mm (default {DEMO_SHAPE[2]}; 128 = whole phantom)",
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output folder that holds other files"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def demo_folder_is_replaceable(out: Path) -> bool:
    """True for a missing or empty folder, or one holding only an earlier demo's files."""
    from ..predict import OUTPUT_FILES

    if not out.exists():
        return True
    if not out.is_dir():
        return False
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return True
    return MARKER in entries and entries <= set(OUTPUT_FILES) | {MARKER, INPUT_DIR}


def clinic_name(roi: str) -> str:
    """The name a clinic might give a model ROI in the demo's input: targets become ``PTV_<Gy>``."""
    from ..rois import PRESCRIPTION_GY

    return f"PTV_{PRESCRIPTION_GY[roi]:g}" if roi in PRESCRIPTION_GY else roi


def same_extent_grid(grid, spacing_mm: tuple[float, float, float]):
    """A grid with the same orientation and centre as ``grid`` and voxel size ``spacing_mm`` covering
    (up to one voxel) the same extent."""
    import numpy as np

    from ..geometry import Grid

    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing)
    size = np.floor(extent / np.asarray(spacing_mm) + 1e-6).astype(int) + 1
    shift = (extent - (size - 1) * np.asarray(spacing_mm)) / 2
    origin = np.asarray(grid.origin) + np.asarray(grid.direction) @ shift
    return Grid(
        tuple(int(n) for n in size), tuple(float(s) for s in spacing_mm), tuple(origin), grid.direction
    )


def write_phantom_inputs(
    folder: Path,
    seed: int = 0,
    spacing_mm: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] = DEMO_SHAPE,
) -> tuple[Path, Path]:
    """Write the phantom as ``folder/ct.nii.gz`` (HU) + ``folder/structures/<name>.nii.gz``.

    shape: the phantom's voxels along the OpenKBP axes at its own spacing (3.906, 3.906, 2.5 mm),
    centred on the phantom's centre (the primary target).
    The volumes are reoriented to the usual axial LPS layout (identity direction) and, with
    ``spacing_mm``, resampled to that voxel size over the same extent (CT linear, masks linear >= 0.5).
    Returns (ct path, structures folder).
    """
    import SimpleITK as sitk

    from ..geometry import Volume, patient_to_volumes, resample_to
    from ..phantom import make_phantom
    from ..report import atomic_write

    patient = make_phantom(shape=shape, seed=seed, with_dose=False)
    ct, masks = patient_to_volumes(patient)
    ct = Volume.from_sitk(sitk.DICOMOrient(ct.to_sitk(), "LPS"))
    masks = {name: Volume.from_sitk(sitk.DICOMOrient(m.to_sitk(), "LPS")) for name, m in masks.items()}
    if spacing_mm is not None:
        target = same_extent_grid(ct.grid, spacing_mm)
        ct = resample_to(ct, target, "linear", -1024.0)
        masks = {name: resample_to(m, target, "mask") for name, m in masks.items()}
    structures_dir = folder / "structures"
    structures_dir.mkdir(parents=True, exist_ok=True)
    ct_path = folder / "ct.nii.gz"
    ct_image = ct.with_array(ct.array.astype("int16")).to_sitk()
    atomic_write(ct_path, lambda tmp: sitk.WriteImage(ct_image, str(tmp), useCompression=True))
    for name, mask in masks.items():
        image = mask.with_array(mask.array.astype("uint8")).to_sitk()
        atomic_write(
            structures_dir / f"{clinic_name(name)}.nii.gz",
            lambda tmp, im=image: sitk.WriteImage(im, str(tmp), useCompression=True),
        )
    return ct_path, structures_dir


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..predict import load_ct, load_structures, resolve_model_path
    from .predict import predict_and_write

    t0 = time.perf_counter()
    model_path = resolve_model_path(args.model)  # fail before writing anything
    out: Path = args.out
    if not demo_folder_is_replaceable(out) and not args.overwrite:
        raise InputError(
            f"{out}: holds files that are not an earlier demo's; choose another --out or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mambadose demo; the demo replaces this folder's contents\n")
    if args.slices < 2:
        raise InputError(f"--slices {args.slices}: at least 2 slices are needed")
    shape = (*DEMO_SHAPE[:2], args.slices)
    ct_path, structures_dir = write_phantom_inputs(
        out / INPUT_DIR, seed=args.seed, spacing_mm=args.spacing_mm, shape=shape
    )
    print(f"wrote the phantom: {ct_path} (CT in HU) and {structures_dir}/ (one mask per structure)")
    predict_and_write(
        load_ct(ct_path),
        load_structures(structures_dir),
        out,
        model_path=model_path,
        device=args.device,
        tta=args.tta,
        overwrite=True,
        progress_bar=not args.no_progress,
        inputs={"ct": str(ct_path), "structures": str(structures_dir), "phantom_seed": args.seed},
    )
    print(
        f"demo finished in {time.perf_counter() - t0:.1f} s; open {out / 'isodose_axial.png'} to see the dose"
    )
    return 0
