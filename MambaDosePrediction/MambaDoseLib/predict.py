"""Predict the dose for any patient: CT + structures on any grid -> dose on the CT's grid + report.

The one entry point used by the ``mambadose predict`` command, the demo and the Slicer module:

    result = predict_dose(ct, structures, prescriptions={"PTV_high": 70})
    write_outputs(result, out_dir)

Steps: check the CT; match the structure names onto the model's ROIs (``names``); put each mask
on the CT grid (resampled with a warning when it is on another grid); build the model grid
(``geometry.model_grid_for``: training spacing, i.e. the card's ``inplane_spacing_mm`` in-plane when
it has one, else ``geometry.MODEL_SPACING_MM``; OpenKBP orientation, centred on the body); build the
``Patient`` there (offset CT, masks, possible-dose mask = ``features.body_mask_from_ct``); predict
(``inference.predict_patient``: zero outside the possible-dose mask); resample the dose back to the
CT grid (linear); DVH metrics with ``metrics.roi_metrics`` on the CT grid and the patient's masks.

The dose is a model prediction for research (``MambaDoseLib.RESEARCH_DISCLAIMER``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import RESEARCH_DISCLAIMER, __version__, geometry, names, report, rois
from .dvh_stream import DEFAULT_RAMP_MM as DVH_STREAM_RAMP_MM
from .errors import InputError, WeightsError
from .geometry import Grid, Volume

log = logging.getLogger(__name__)

#: smallest and largest voxel size (mm) accepted for a CT
SPACING_LIMITS_MM: tuple[float, float] = (0.1, 20.0)
#: image file suffixes read from a structures folder
MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: DVH curve bin width (Gy)
DVH_BIN_GY = 0.1

#: files that ``write_outputs`` writes (name -> what it is)
OUTPUT_FILES: dict[str, str] = {
    "dose.nii.gz": "predicted dose (Gy) on the CT's grid",
    "dvh_metrics.csv": "DVH metrics per structure",
    "dvh.png": "DVH curves",
    "isodose_axial.png": "isodose lines, axial",
    "isodose_coronal.png": "isodose lines, coronal",
    "isodose_sagittal.png": "isodose lines, sagittal",
    "summary.json": "inputs, model, device, timings, structure mapping, metrics",
}


@dataclass
class PredictionResult:
    """What ``predict_dose`` returns.

    dose: predicted dose (Gy, float32) on the CT's grid; zero outside the body.
    roi_map: patient structure name -> model ROI, for the structures used.
    prescriptions: patient target name -> prescription (Gy).
    unmatched: patient structure name -> why it was ignored.
    metrics: one dict per used structure: ``report.CSV_COLUMNS`` keys (``metrics.roi_metrics``).
    dvh: patient structure name -> (dose_axis_gy, volume_percent) (``metrics.dvh_curve``).
    timings: stage -> seconds. device: the torch device used. model_card: the weights' card.
    model_path: the weights file. tta: whether flip test-time augmentation was used.
    views: the slice orientations averaged. widen_ptv_hot_end: whether the targets' hot end was
    widened (``calibration.widen_ptv_hot_tail``). dvh_model_path / dvh_weight: the DVH stream's
    model and weight inside the structures (``dvh_stream.compose``), None without one.
    warnings: the warnings raised on the way (also logged).
    ct: the CT (HU) as given; masks: used structures as bool Volumes on the CT grid.
    model_grid: the grid the model saw.
    """

    dose: Volume
    roi_map: dict[str, str]
    prescriptions: dict[str, float]
    unmatched: dict[str, str]
    metrics: list[dict[str, Any]]
    dvh: dict[str, tuple[np.ndarray, np.ndarray]]
    timings: dict[str, float]
    device: str
    model_card: dict[str, Any]
    model_path: str
    tta: bool
    ct: Volume
    masks: dict[str, Volume]
    model_grid: Grid
    warnings: list[str] = field(default_factory=list)
    views: tuple[str, ...] = ("axial",)
    widen_ptv_hot_end: bool = False
    dvh_model_path: str | None = None
    dvh_weight: float | None = None

    @property
    def highest_prescription_gy(self) -> float:
        return max(self.prescriptions.values())

    @property
    def highest_dose_target(self) -> str:
        """The patient target with the highest prescription (ties: the larger volume)."""
        return max(self.prescriptions, key=lambda n: (self.prescriptions[n], int(self.masks[n].array.sum())))


# reading files --------------------------------------------------------------------------------


def _read_image(path: Path, what: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unknown error"
        raise InputError(f"{path}: cannot read the {what} ({detail})") from None


def load_ct(path: str | Path) -> Volume:
    """Read a CT in HU: a NIfTI / NRRD / MetaImage file or a DICOM series folder (SimpleITK).

    A folder with several DICOM series uses the one with the most files (with a warning).
    Raises InputError for a missing, unreadable, 2D, multi-component or non-finite CT or an absurd
    voxel size (``check_ct``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: CT not found")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        image = _read_image(path, "CT")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: the CT has {image.GetNumberOfComponentsPerPixel()} components per voxel (expected 1)"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path}: the CT is {image.GetDimension()}D (expected a 3D volume)")
    if path.is_file() and _nifti_has_nan(path, image):
        raise InputError(f"{path}: the CT contains NaN values")
    ct = Volume.from_sitk(sitk.Cast(image, sitk.sitkFloat32))
    check_ct(ct, str(path))
    return ct


def _nifti_has_nan(path: Path, image: sitk.Image) -> bool:
    """ITK's NIfTI reader turns NaN into 0: look at a float NIfTI file's stored values (nibabel)."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return False
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return False
    import nibabel as nib

    return bool(np.isnan(np.asanyarray(nib.load(str(path)).dataobj)).any())


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: no DICOM series found in the folder")
    files = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    chosen = max(files, key=lambda sid: len(files[sid]))
    if len(series) > 1:
        log.warning(
            "%s: %d DICOM series; using %s (%d files)", folder, len(series), chosen, len(files[chosen])
        )
    reader.SetFileNames(files[chosen])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            f"{folder}: cannot read the DICOM series ({str(exc).strip().splitlines()[-1][:160]})"
        ) from None


def check_ct(ct: Volume, source: str = "CT") -> list[str]:
    """Refuse a CT the model cannot use (InputError); return warnings for a suspicious one.

    Refused: not 3D, a single slice (2D), NaN or infinite values, a voxel size outside
    ``SPACING_LIMITS_MM``, a non-orthonormal direction. Warned: no negative value (a CT in HU has
    air at about -1000; this may be raw stored values or offset CT instead of HU).
    """
    array = ct.array
    if array.ndim != 3:
        raise InputError(f"{source}: the CT is {array.ndim}D (expected 3D)")
    if min(array.shape) < 2:
        raise InputError(
            f"{source}: the CT is 2D (size {tuple(array.shape[::-1])} voxels); a 3D volume is needed"
        )
    lo, hi = SPACING_LIMITS_MM
    bad = [s for s in ct.spacing if not (lo <= s <= hi)]
    if bad:
        raise InputError(
            f"{source}: absurd voxel size {tuple(round(s, 4) for s in ct.spacing)} mm (expected {lo} to {hi} mm per axis)"
        )
    if not np.allclose(ct.direction.T @ ct.direction, np.eye(3), atol=1e-4):
        raise InputError(f"{source}: the direction matrix is not orthonormal")
    if not np.isfinite(array).all():
        raise InputError(f"{source}: the CT contains NaN or infinite values")
    warnings = []
    if float(array.min()) >= 0:
        warnings.append(
            f"{source}: the CT has no negative value; MambaDose expects Hounsfield units (air about -1000 HU)"
        )
    return warnings


def _mask_name(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def load_structures(path: str | Path, labels: str | Path | None = None) -> dict[str, Volume]:
    """Read structure masks: a folder of one mask file per structure, or one label map file.

    Folder: every ``*.nii.gz``, ``*.nii``, ``*.nrrd``, ``*.nhdr``, ``*.mha``, ``*.mhd``; the name is the
    file name without its suffix; voxels != 0 (>= 0.5 for float files) are inside.
    Label map: a label table names the values: ``labels`` (a text/CSV file of ``value name`` or
    ``value,name`` lines, or a JSON object {"value": "name"}) or, for a Slicer ``.seg.nrrd``, its
    segment metadata. Returns name -> bool Volume on the file's own grid.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: structures not found")
    if path.is_dir():
        return _load_mask_folder(path)
    return _load_label_map(path, Path(labels) if labels is not None else None)


def _load_mask_folder(folder: Path) -> dict[str, Volume]:
    structures: dict[str, Volume] = {}
    for file in sorted(folder.iterdir()):
        name = _mask_name(file)
        if name is None or not file.is_file() or name.startswith("."):
            continue
        image = _read_image(file, "structure mask")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{file}: a structure mask must be a 3D single-component image")
        volume = Volume.from_sitk(image)
        array = volume.array
        inside = array >= 0.5 if np.issubdtype(array.dtype, np.floating) else array != 0
        if name in structures:
            raise InputError(f"{file}: a second file for the structure {name!r}")
        structures[name] = volume.with_array(inside, "")
    if not structures:
        raise InputError(f"{folder}: no mask files ({', '.join(MASK_SUFFIXES)}) in the structures folder")
    return structures


def read_label_table(path: Path) -> dict[int, str]:
    """A label table: JSON {"1": "PTV70", ...} or text lines ``1 PTV70`` / ``1,PTV 70`` (``#`` comments)."""
    if not path.is_file():
        raise InputError(f"{path}: label table not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            import json

            return {int(k): str(v) for k, v in json.loads(text).items()}
        table = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            value, _, name = (
                line.replace("\t", ",").partition(",") if "," in line or "\t" in line else line.partition(" ")
            )
            table[int(value.strip())] = name.strip().strip('"')
        return table
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: cannot read the label table ({exc})") from None


def _segment_table(image: sitk.Image) -> dict[int, str]:
    """Label table from a Slicer .seg.nrrd's segment metadata (single layer)."""
    table: dict[int, str] = {}
    n = 0
    while image.HasMetaDataKey(f"Segment{n}_Name"):
        value_key = f"Segment{n}_LabelValue"
        if image.HasMetaDataKey(value_key):
            table[int(image.GetMetaData(value_key))] = image.GetMetaData(f"Segment{n}_Name")
        n += 1
    return table


def _load_label_map(path: Path, labels: Path | None) -> dict[str, Volume]:
    image = _read_image(path, "label map")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: a label map must be a 3D single-component image (a multi-layer segmentation is not supported)"
        )
    table = read_label_table(labels) if labels is not None else _segment_table(image)
    if not table:
        raise InputError(f"{path}: a label map needs a label table (--labels FILE with 'value name' lines)")
    volume = Volume.from_sitk(image)
    return {name: volume.with_array(volume.array == value, "") for value, name in table.items()}


# the prediction ------------------------------------------------------------------------------


class _Warnings(list):
    def add(self, message: str) -> None:
        log.warning("%s", message)
        self.append(message)


def _masks_on_ct(
    ct: Volume, structures: Mapping[str, Volume], mapping: Mapping[str, str], warn: _Warnings
) -> dict[str, Volume]:
    """Used structures as bool masks on the CT grid; off-grid ones resampled (warning), empty ones dropped."""
    ct_grid = ct.grid
    masks: dict[str, Volume] = {}
    for name in mapping:
        volume = structures[name]
        if not volume.grid.same_as(ct_grid):
            if not geometry.physical_overlap(volume.grid, ct_grid):
                raise InputError(
                    f"structure {name!r} does not overlap the CT at all (is it from another patient or scan?)"
                )
            warn.add(f"structure {name!r} is on a different grid than the CT: resampled onto the CT grid")
        mask = geometry.resample_to(volume.with_array(volume.array.astype(bool)), ct_grid, "mask")
        if not mask.array.any():
            warn.add(f"structure {name!r} is empty on the CT grid: ignored")
            continue
        masks[name] = mask
    return masks


def _model_masks(
    structures: Mapping[str, Volume], roi_map: Mapping[str, str], grid: Grid, warn: _Warnings
) -> dict[str, Volume]:
    """Model ROI -> mask on the model grid (masks of several patient structures for one ROI joined)."""
    joined: dict[str, np.ndarray] = {}
    for name, roi in roi_map.items():
        mask = geometry.resample_to(
            structures[name].with_array(structures[name].array.astype(bool)), grid, "mask"
        ).array
        if not mask.any():
            warn.add(f"structure {name!r} is smaller than a model voxel or outside the model's field of view")
        joined[roi] = joined[roi] | mask if roi in joined else mask
    return {roi: Volume.from_grid(mask, grid) for roi, mask in joined.items() if mask.any()}


def resolve_model_path(model_path: str | Path | None = None) -> Path:
    """The weights file to use (``weights.model_path_from_arg``: default the shipped model,
    ``"ensemble"`` the shipped ensemble); WeightsError when absent."""
    from . import weights

    path = weights.model_path_from_arg(model_path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: model weights not found"
            + (" (the trained weights are not installed; pass --model FILE)" if model_path is None else "")
        )
    return path


def predict_dose(
    ct: Volume,
    structures: dict[str, Volume],
    *,
    prescriptions: dict[str, float] | None = None,
    model_path: str | Path | None = None,
    device: str = "auto",
    tta: bool = False,
    views: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    widen_ptv_hot_end: bool = False,
    dvh_model_path: str | Path | None = None,
    dvh_weight: float | None = None,
) -> PredictionResult:
    """Predict the dose for a patient (research prediction, not a treatment plan).

    ct: the CT in HU on any grid (``Volume``; (K, J, I) array).
    structures: the patient's structure name -> mask Volume (non-zero inside), any grid overlapping
      the CT. Names are matched with ``names.match_structures``; unmatched ones are ignored.
    prescriptions: patient structure name -> prescription (Gy), making that structure a target
      (overrides a dose read from its name).
    model_path: weights file (default ``weights.default_model_path()``); device "auto" | "cpu" | "cuda".
    tta: average over left-right flipped inputs. views: slice orientations averaged (default: the
    model card's, see ``inference.card_views``). progress(done, total): slices predicted so far.
    cancel(): checked between batches; returning True raises ``inference.PredictionCancelled``.
    widen_ptv_hot_end: widen the dose's hot end inside each target on the model grid
    (``calibration.widen_ptv_hot_tail``) before it goes back to the CT's grid.
    dvh_model_path: a second model whose dose is mixed in inside the structures with ``dvh_weight``
    (default ``dvh_stream.DEFAULT_WEIGHT``; ``dvh_stream.compose``, before the widening); it runs
    with the same TTA, on its own card's views, on the main model's grid.
    Raises InputError (bad CT, no overlap, no target), WeightsError (missing/mismatched weights).
    """
    from . import calibration, dvh_stream, inference, metrics, weights

    if dvh_model_path is None and dvh_weight is not None:
        raise InputError("a DVH-stream weight needs a DVH-stream model")
    if dvh_model_path is not None:
        dvh_weight = dvh_stream.DEFAULT_WEIGHT if dvh_weight is None else float(dvh_weight)
        if not 0.0 <= dvh_weight <= 1.0:
            raise InputError(f"the DVH stream's weight must lie in [0, 1], got {dvh_weight}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warn = _Warnings()
    for message in check_ct(ct):
        warn.add(message)
    roi_map, rx, unmatched = names.match_structures(structures, prescriptions)
    for name, reason in unmatched.items():
        warn.add(f"structure {name!r} ignored: {reason}")
    if not rx:
        raise InputError(
            "no target: none of the structures is a PTV with a prescription "
            f"(structures: {', '.join(structures) or 'none'}); name one PTV<Gy> or pass --rx NAME=GY"
        )
    masks = _masks_on_ct(ct, structures, roi_map, warn)
    roi_map = {n: r for n, r in roi_map.items() if n in masks}
    rx = {n: gy for n, gy in rx.items() if n in masks}
    if not rx:
        raise InputError("no target: every PTV mask is empty")
    _warn_far_prescriptions(rx, roi_map, warn)
    timings["check_inputs"] = time.perf_counter() - t_start

    t = time.perf_counter()
    path = resolve_model_path(model_path)
    torch_device = inference.resolve_device(device)
    model, card = weights.load_model(path, device=str(torch_device))
    views = inference.card_views(card) if views is None else inference.check_views(views)
    inference.check_slab_views(model, views)
    stream = None
    if dvh_model_path is not None:
        stream = dvh_stream.load(resolve_model_path(dvh_model_path), torch_device, dvh_weight)
    timings["load_model"] = time.perf_counter() - t

    t = time.perf_counter()
    # the model grid: the card's in-plane voxel size when it was trained on one (the patient then
    # lies on it and predict_patient does not resample again), else the default 3.906 mm
    inplane_mm = inference.card_inplane_spacing(card)
    spacing_mm = geometry.MODEL_SPACING_MM
    if inplane_mm is not None:
        spacing_mm = (inplane_mm, inplane_mm, geometry.MODEL_SPACING_MM[2])
    grid = geometry.model_grid_for(ct, spacing_mm=spacing_mm)
    model_masks = _model_masks(masks, roi_map, grid, warn)
    patient = geometry.to_openkbp_patient(ct, model_masks, grid, patient_id="patient")
    timings["resample_to_model_grid"] = time.perf_counter() - t

    t = time.perf_counter()
    first, second = _two_pass_progress(progress) if stream is not None else (progress, None)
    dose_ijk = inference.predict_patient(
        model, card, patient, device=torch_device, tta=tta, views=views, progress=first, cancel=cancel
    )
    if stream is not None:
        dose_ijk = dvh_stream.apply(
            stream, dose_ijk, patient, device=torch_device, tta=tta, progress=second, cancel=cancel
        )
    if widen_ptv_hot_end:
        dose_ijk = calibration.widen_ptv_hot_tail(dose_ijk, patient.structures, patient.possible_dose_mask)
    timings["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    dose_grid = geometry.patient_volume(patient, dose_ijk)
    dose = geometry.resample_to(dose_grid, ct, "linear", 0.0)
    dose = dose.with_array(np.maximum(dose.array, 0.0).astype(np.float32), report.NIFTI_DESCRIPTION)
    timings["resample_to_ct"] = time.perf_counter() - t

    t = time.perf_counter()
    rows, curves = _dvh(dose, masks, roi_map, rx, metrics)
    timings["metrics"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return PredictionResult(
        dose=dose,
        roi_map=roi_map,
        prescriptions=rx,
        unmatched=unmatched,
        metrics=rows,
        dvh=curves,
        timings=timings,
        device=_device_text(torch_device),
        model_card=dict(card),
        model_path=str(path),
        tta=tta,
        views=tuple(views),
        widen_ptv_hot_end=widen_ptv_hot_end,
        dvh_model_path=None if stream is None else stream.path,
        dvh_weight=None if stream is None else stream.weight,
        ct=ct,
        masks=masks,
        model_grid=grid,
        warnings=list(warn),
    )


def _two_pass_progress(progress: Callable[[int, int], None] | None):
    """Two ``progress(done, total)`` callbacks for a prediction in two passes (the main model, then
    the DVH stream's) that report to one: the first counts its slices against twice its total, the
    second continues where the first ended, so the count never goes back."""
    if progress is None:
        return None, None
    first_total = [0]

    def first(done: int, total: int) -> None:
        first_total[0] = total
        progress(done, 2 * total)

    def second(done: int, total: int) -> None:
        progress(first_total[0] + done, first_total[0] + total)

    return first, second


def _warn_far_prescriptions(rx: Mapping[str, float], roi_map: Mapping[str, str], warn: _Warnings) -> None:
    lo, hi = names.PLAUSIBLE_PRESCRIPTION_GY
    for name, gy in rx.items():
        model_gy = rois.PRESCRIPTION_GY[roi_map[name]]
        if gy != model_gy:
            warn.add(
                f"target {name!r} ({gy:g} Gy) is given to the model as {roi_map[name]} ({model_gy:g} Gy)"
            )
        if not lo <= gy <= hi:
            warn.add(f"target {name!r}: {gy:g} Gy is outside the prescriptions the model was trained on")


def _dvh(
    dose: Volume, masks, roi_map, rx, metrics
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Metrics rows and DVH curves of each used structure on the CT grid."""
    rows, curves = [], {}
    max_dose = float(dose.array.max()) if dose.array.size else 0.0
    for name, roi in roi_map.items():
        mask = masks[name].array
        row: dict[str, Any] = {
            "structure": name,
            "model_roi": roi,
            "kind": rois.ROI_BY_NAME[roi].kind,
            "prescription_gy": rx.get(name, float("nan")),
        }
        row.update(metrics.roi_metrics(dose.array, mask, dose.voxel_volume_mm3, rx.get(name)))
        rows.append(row)
        curves[name] = metrics.dvh_curve(dose.array, mask, bin_width_gy=DVH_BIN_GY, max_dose_gy=max_dose)
    return rows, curves


def _device_text(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# writing ------------------------------------------------------------------------------------


def existing_outputs(out_dir: str | Path) -> list[Path]:
    """The result files already in ``out_dir`` (those ``write_outputs`` would replace)."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in OUTPUT_FILES if (out_dir / name).exists()]


def check_output_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse (InputError) an output folder that already holds results, unless ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    found = existing_outputs(out_dir)
    if found and not overwrite:
        raise InputError(
            f"{out_dir}: already holds results ({', '.join(p.name for p in found)}); pass --overwrite to replace them"
        )


def write_outputs(
    result: PredictionResult,
    out_dir: str | Path,
    overwrite: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the files of ``OUTPUT_FILES`` into ``out_dir`` (created) and return their paths.

    Refuses (InputError, nothing written) a folder that already holds results unless ``overwrite``.
    inputs: what to record about the inputs in summary.json (e.g. file paths).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    written = [
        report.write_dose_nifti(out_dir / "dose.nii.gz", result.dose),
        report.write_metrics_csv(out_dir / "dvh_metrics.csv", result.metrics),
        report.plot_dvh(
            out_dir / "dvh.png",
            result.dvh,
            targets=tuple(result.prescriptions),
            prescription_gy=result.highest_prescription_gy,
        ),
    ]
    target = result.highest_dose_target
    written += report.plot_isodose_views(
        {view: out_dir / f"isodose_{view}.png" for view in ("axial", "coronal", "sagittal")},
        result.ct,
        result.dose,
        result.masks[target],
        result.highest_prescription_gy,
        target_name=target,
    )
    timings = {**result.timings, "write_outputs": time.perf_counter() - t}
    written.append(
        report.write_summary_json(out_dir / "summary.json", summary(result, inputs, timings, written))
    )
    return written


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {
        "size_ijk": list(grid.size),
        "spacing_mm": list(grid.spacing),
        "origin_lps_mm": list(grid.origin),
        "direction": np.asarray(grid.direction).ravel().tolist(),
    }


def summary(
    result: PredictionResult,
    inputs: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    files: list[Path] | None = None,
) -> dict[str, Any]:
    """The JSON summary of a prediction (``report.write_summary_json`` adds the disclaimer)."""
    return {
        "disclaimer": RESEARCH_DISCLAIMER,
        "mambadose_version": __version__,
        "inputs": dict(inputs or {}),
        # the card without its tensor listing (names and shapes: the weights file holds them)
        "model": {
            "path": result.model_path,
            "card": {k: v for k, v in result.model_card.items() if k != "tensors"},
        },
        "device": result.device,
        "tta": result.tta,
        "widen_ptv_hot_end": result.widen_ptv_hot_end,
        "dvh_stream": None
        if result.dvh_model_path is None
        else {"model": result.dvh_model_path, "weight": result.dvh_weight, "ramp_mm": DVH_STREAM_RAMP_MM},
        "views": list(result.views),
        "ct_grid": _grid_dict(result.ct.grid),
        "model_grid": _grid_dict(result.model_grid),
        "structures": {
            "used": result.roi_map,
            "prescriptions_gy": result.prescriptions,
            "unmatched": result.unmatched,
        },
        "highest_prescription_gy": result.highest_prescription_gy,
        "isodose_levels_percent": [round(f * 100) for f in report.ISODOSE_LEVELS],
        "max_dose_gy": float(result.dose.array.max()),
        "metrics": result.metrics,
        "warnings": result.warnings,
        "timings_s": {k: round(v, 3) for k, v in (timings or result.timings).items()},
        "outputs": {p.name: OUTPUT_FILES.get(p.name, "") for p in (files or [])}
        | {"summary.json": OUTPUT_FILES["summary.json"]},
    }
