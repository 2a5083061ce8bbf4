"""NIfTI files of a patient's volumes (SimpleITK), in the OpenKBP array layout.

The voxel array of a written file is the patient array ``a[i, j, k]`` itself: NIfTI index axis n
is the OpenKBP axis n, so ``nibabel.load(path).get_fdata()`` equals ``a`` and
``SimpleITK.GetArrayFromImage`` gives ``a.transpose(2, 1, 0)``. The voxel size is the patient's
``spacing_mm`` (OpenKBP's voxel_dimensions) and the orientation its ``direction``
(``patient.OPENKBP_DIRECTION`` for OpenKBP data), so viewers place the volumes correctly.

File types: CT and dose float32, masks uint8 (0/1). Every file is written to a temporary name
beside its target and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .patient import OPENKBP_DIRECTION, Patient

CT_NAME = "ct.nii.gz"
DOSE_NAME = "dose.nii.gz"
POSSIBLE_DOSE_MASK_NAME = "possible_dose_mask.nii.gz"


def patient_nifti_names(patient: Patient) -> list[str]:
    """File names :func:`write_patient_nifti` writes for ``patient`` (dose and ROIs when present)."""
    names = [CT_NAME]
    names += [DOSE_NAME] if patient.dose_gy is not None else []
    names += [POSSIBLE_DOSE_MASK_NAME]
    names += [f"{name}.nii.gz" for name in patient.structures]
    return names


def write_patient_nifti(patient: Patient, out_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write a patient's CT, dose (if any), possible-dose mask and ROI masks as NIfTI files.

    out_dir: created if missing. Files: ct.nii.gz (float32 offset CT), dose.nii.gz (float32 Gy),
      possible_dose_mask.nii.gz and ``<ROI>.nii.gz`` (uint8) for each contoured ROI.
    Raises InputError, writing nothing, when out_dir already holds any of these files and not
    ``overwrite``. Every file is written to a temporary name first; the renames come last, so a
    failure leaves no partial file behind. Returns the written paths.
    """
    out_dir = Path(out_dir)
    names = patient_nifti_names(patient)
    existing = [name for name in names if (out_dir / name).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise InputError(f"{out_dir}: already holds {shown}; pass --overwrite to replace")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    arrays: dict[str, np.ndarray] = {CT_NAME: np.asarray(patient.ct, np.float32)}
    if patient.dose_gy is not None:
        arrays[DOSE_NAME] = np.asarray(patient.dose_gy, np.float32)
    arrays[POSSIBLE_DOSE_MASK_NAME] = np.asarray(patient.possible_dose_mask, np.uint8)
    for name, mask in patient.structures.items():
        arrays[f"{name}.nii.gz"] = np.asarray(mask, np.uint8)

    temporaries: dict[Path, Path] = {}
    try:
        for name, array in arrays.items():
            target = out_dir / name
            temporaries[target] = _temporary_beside(target)
            write_nifti(temporaries[target], array, patient.spacing_mm, patient.origin_mm, patient.direction)
        for target, tmp in temporaries.items():
            os.replace(tmp, target)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return [out_dir / name for name in arrays]


def write_nifti(
    path: str | os.PathLike,
    array_ijk: np.ndarray,
    spacing_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    direction: np.ndarray = OPENKBP_DIRECTION,
) -> None:
    """Write one (I, J, K) array as a NIfTI image (not atomic; see :func:`write_patient_nifti`).

    spacing_mm, origin_mm: along / of index axes 0, 1, 2 (mm, LPS); direction: 3x3, columns = LPS
    direction of the index axes. The array's dtype is kept.
    """
    import SimpleITK as sitk

    if np.ndim(array_ijk) != 3:
        raise ValueError(f"expected a 3-D array, got shape {np.shape(array_ijk)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing_mm])
    image.SetOrigin([float(o) for o in origin_mm])
    image.SetDirection([float(d) for d in np.asarray(direction, float).ravel()])
    sitk.WriteImage(image, str(path), useCompression=True)


def read_nifti_array(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3-D NIfTI file as (array a[i, j, k] in the file's dtype, voxel size (mm) per axis).

    The inverse of :func:`write_nifti` for the array and spacing. Raises InputError (file named)
    for a missing, unreadable or non-3-D file.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file missing")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"{path}: cannot read as NIfTI ({first.strip()})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return np.ascontiguousarray(array), tuple(float(s) for s in image.GetSpacing())  # type: ignore[return-value]


def _temporary_beside(target: Path) -> Path:
    """A new empty file in target's folder whose name keeps the ``.nii.gz`` suffix for SimpleITK."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.nii.gz", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, _default_file_mode())
    return Path(tmp)


def _default_file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
