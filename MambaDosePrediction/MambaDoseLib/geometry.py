"""Image geometry: volumes with their physical placement, the model grid, and resampling.

Conventions (the ITK/DICOM ones, so SimpleITK and Slicer agree with us):

- ``Volume.array`` is in SimpleITK's index order ``(K, J, I)`` = (z, y, x index): the array that
  ``sitk.GetArrayFromImage`` returns. Physical point of voxel index ``(i, j, k)``:
  ``origin + direction @ (spacing * (i, j, k))``.
- ``spacing`` (x, y, z) and ``origin`` (x, y, z) in mm, ``direction`` a 3x3 matrix whose columns
  are the physical directions of the I, J, K index axes, all in LPS (ITK's world frame).
  ``direction.ravel()`` is ITK's row-major ``GetDirection()`` tuple.
- Slicer gives RAS: RAS = LPS with x and y negated (``Volume.from_ijk_to_ras`` / ``ijk_to_ras``).

The model grid (``model_grid_for``) uses the OpenKBP layout of ``patient.OPENKBP_DIRECTION``:
ITK index axis ``n`` is the OpenKBP array axis ``n`` (axis 0 anterior -> posterior, axis 1
right -> left, axis 2 superior -> inferior), so a model-grid ``Volume.array`` (K, J, I) is the
OpenKBP array ``a[i, j, k]`` transposed: ``a = volume.array.transpose(2, 1, 0)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .patient import OPENKBP_DIRECTION, Patient

log = logging.getLogger(__name__)

#: The training grid of the model: voxel size (mm) along the OpenKBP axes 0, 1, 2 and the axial
#: (in-plane) size in voxels.
MODEL_SPACING_MM: tuple[float, float, float] = (3.906, 3.906, 2.5)
MODEL_INPLANE_SIZE: int = 128

#: Offset between OpenKBP CT numbers and Hounsfield units: offset CT = HU + 1024 (0 = no data).
CT_OFFSET: float = 1024.0

#: RAS <-> LPS: flip x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

Interpolator = Literal["linear", "nearest", "mask"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space (no data).

    size: number of voxels along the I, J, K index axes (ITK order x, y, z).
    spacing: voxel size (mm) along I, J, K.
    origin: physical (LPS, mm) position of voxel (0, 0, 0).
    direction: 3x3, columns = LPS direction of the I, J, K axes.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def index_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel index (i, j, k, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def corners(self) -> np.ndarray:
        """(8, 3) LPS positions (mm) of the outermost voxel centres."""
        idx = np.array(
            [
                [i, j, k, 1.0]
                for i in (0, self.size[0] - 1)
                for j in (0, self.size[1] - 1)
                for k in (0, self.size[2] - 1)
            ]
        )
        return (self.index_to_physical() @ idx.T).T[:, :3]

    def same_as(self, other: Grid, tol_mm: float = 1e-4) -> bool:
        """True when both grids have the same size and place every voxel within ``tol_mm``."""
        if tuple(self.size) != tuple(other.size):
            return False
        return bool(np.allclose(self.corners(), other.corners(), atol=tol_mm, rtol=0))

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image with this geometry (for ResampleImageFilter)."""
        img = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        _set_geometry(img, self)
        return img


@dataclass
class Volume:
    """A 3D array with its physical geometry (see the module docstring for conventions).

    array: (K, J, I) values (e.g. CT in HU, a bool mask, dose in Gy).
    spacing: (x, y, z) voxel size in mm along the I, J, K index axes.
    origin: LPS position (mm) of voxel (0, 0, 0).
    direction: 3x3 LPS direction cosines, columns = I, J, K axes (ITK row-major when raveled).
    description: free text carried into written files (e.g. the research disclaimer).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    description: str = ""

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def grid(self) -> Grid:
        k, j, i = self.array.shape
        return Grid((i, j, k), self.spacing, self.origin, self.direction.copy())

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def with_array(self, array: np.ndarray, description: str | None = None) -> Volume:
        """A volume on the same grid holding ``array`` (same (K, J, I) shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        desc = self.description if description is None else description
        return Volume(array, self.spacing, self.origin, self.direction.copy(), desc)

    @classmethod
    def from_grid(cls, array: np.ndarray, grid: Grid, description: str = "") -> Volume:
        """Wrap a (K, J, I) array lying on ``grid``."""
        if tuple(array.shape[::-1]) != tuple(grid.size):
            raise ValueError(f"array shape {array.shape} (K, J, I) does not match grid size {grid.size}")
        return cls(array, grid.spacing, grid.origin, np.asarray(grid.direction).copy(), description)

    # SimpleITK -----------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """From a 3D scalar SimpleITK image (the array is a copy)."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        desc = image.GetMetaData("ITK_FileNotes") if image.HasMetaDataKey("ITK_FileNotes") else ""
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.array(image.GetDirection()).reshape(3, 3),
            desc,
        )

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image; bool arrays become UInt8; the description goes to ITK_FileNotes."""
        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        _set_geometry(image, self.grid)
        if self.description:
            image.SetMetaData("ITK_FileNotes", self.description)
        return image

    # Slicer (RAS) -------------------------------------------------------------------------
    @classmethod
    def from_ijk_to_ras(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray, description: str = "") -> Volume:
        """From a Slicer volume: the (K, J, I) array (``arrayFromVolume``) and its 4x4 IJK-to-RAS matrix."""
        m = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
        lps = _LPS_TO_RAS @ m[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        if np.any(spacing <= 0):
            raise InputError("IJK-to-RAS matrix has a zero-length axis")
        direction = lps / spacing
        origin = _LPS_TO_RAS @ m[:3, 3]
        return cls(array_kji, tuple(spacing), tuple(origin), direction, description)

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 IJK-to-RAS matrix (Slicer's ``SetIJKToRASMatrix``)."""
        return _ras_matrix(self.grid.index_to_physical())


def _ras_matrix(lps_matrix: np.ndarray) -> np.ndarray:
    flip = np.eye(4)
    flip[:3, :3] = _LPS_TO_RAS
    return flip @ lps_matrix


def _set_geometry(image: sitk.Image, grid: Grid) -> None:
    image.SetSpacing([float(s) for s in grid.spacing])
    image.SetOrigin([float(o) for o in grid.origin])
    image.SetDirection([float(d) for d in np.asarray(grid.direction, float).ravel()])


# Resampling --------------------------------------------------------------------------------


def resample_to(
    volume: Volume,
    reference: Grid | Volume,
    interpolator: Interpolator = "linear",
    default_value: float = 0.0,
    antialias: bool = False,
) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (SimpleITK ResampleImageFilter).

    interpolator: ``"linear"`` (CT, dose; float32 out), ``"nearest"`` (labels; dtype kept) or
      ``"mask"``: the mask as float, linearly interpolated, then ``>= 0.5`` (bool out). ``"mask"`` is
      the project's rule for structures: its surface lies where the linear interpolant crosses
      one half, which keeps a structure's volume when the grid changes (nearest would shift
      surfaces by up to half a voxel).
    default_value: the value of points outside ``volume`` (0: no CT data / no dose / outside).
    antialias: for ``"linear"``: smooth first with a Gaussian whose FWHM makes up the difference
      between the target and the source voxel size along each axis (where the target is coarser),
      so a fine CT (e.g. 1 mm) becomes what a scanner would give at the model's voxel size
      instead of a noisy point sample.
    A volume already on the reference grid (within 1e-4 mm) is returned as an exact copy.
    """
    grid = reference.grid if isinstance(reference, Volume) else reference
    if volume.grid.same_as(grid):
        array = volume.array > 0 if interpolator == "mask" and volume.array.dtype != bool else volume.array
        return Volume.from_grid(array.copy(), grid, volume.description)
    if interpolator == "mask":
        source = volume.with_array(volume.array.astype(np.float32))
        out = _resample_sitk(source.to_sitk(), grid, sitk.sitkLinear, 0.0)
        return Volume.from_grid(sitk.GetArrayViewFromImage(out) >= 0.5, grid, volume.description)
    if interpolator == "linear":
        source = volume.with_array(volume.array.astype(np.float32, copy=False)).to_sitk()
        if antialias:
            source = _antialias(source, volume.grid, grid)
        out = _resample_sitk(source, grid, sitk.sitkLinear, default_value)
        return Volume.from_grid(sitk.GetArrayFromImage(out), grid, volume.description)
    if interpolator == "nearest":
        out = _resample_sitk(volume.to_sitk(), grid, sitk.sitkNearestNeighbor, default_value)
        array = sitk.GetArrayFromImage(out)
        return Volume.from_grid(
            array.astype(bool) if volume.array.dtype == bool else array, grid, volume.description
        )
    raise ValueError(f"unknown interpolator {interpolator!r}")


def _resample_sitk(image: sitk.Image, grid: Grid, interpolator: int, default_value: float) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(grid.reference_image())
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(image.GetPixelID())
    f.SetTransform(sitk.Transform())
    return f.Execute(image)


def _antialias(image: sitk.Image, source: Grid, target: Grid) -> sitk.Image:
    """Gaussian pre-filter for downsampling ``source`` -> ``target`` (sigma in mm per source axis)."""
    # target voxel extent along each source axis direction
    couple = np.abs(
        np.asarray(source.direction).T @ np.asarray(target.direction)
    )  # (source axis, target axis)
    target_along = couple @ np.asarray(target.spacing)
    source_sp = np.asarray(source.spacing)
    sigma = np.sqrt(np.clip(target_along**2 - source_sp**2, 0.0, None)) / 2.3548
    if not np.any(sigma > 0.25 * source_sp):
        return image
    # a sigma below a quarter voxel does nothing useful; keep the filter separable per axis
    sigma = np.where(sigma > 0.25 * source_sp, sigma, 0.0)
    return sitk.DiscreteGaussian(image, [float(s) ** 2 for s in sigma], 32, 0.01, True)


def physical_overlap(a: Grid, b: Grid) -> bool:
    """True when the axis-aligned LPS bounding boxes of the two grids' voxel regions intersect."""
    lo_a, hi_a = _bounds(a)
    lo_b, hi_b = _bounds(b)
    return bool(np.all(lo_a <= hi_b) and np.all(lo_b <= hi_a))


def _bounds(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    corners = grid.corners()
    half = np.abs(np.asarray(grid.direction) @ np.diag(grid.spacing)).sum(axis=1) / 2
    return corners.min(axis=0) - half, corners.max(axis=0) + half


# The model grid -----------------------------------------------------------------------------


def hu_to_offset_ct(hu: np.ndarray) -> np.ndarray:
    """Clinical CT (HU) -> the model's offset CT numbers (HU + 1024, clipped at 0), float32.

    Computed in the input's float precision (float64 for integer input), then rounded once to
    float32, so ``hu_to_offset_ct(offset_ct_to_hu(x)) == x`` exactly for float32 ``x >= 0``.
    """
    hu = np.asarray(hu)
    if not np.issubdtype(hu.dtype, np.floating):
        hu = hu.astype(np.float64)
    return np.clip(hu + hu.dtype.type(CT_OFFSET), 0.0, None).astype(np.float32)


def offset_ct_to_hu(offset_ct: np.ndarray) -> np.ndarray:
    """OpenKBP offset CT numbers -> HU (offset - 1024) as float64 (exact for float32 input)."""
    return np.asarray(offset_ct, dtype=np.float64) - CT_OFFSET


def model_grid_for(
    ct: Volume,
    body_mask: Volume | None = None,
    *,
    spacing_mm: tuple[float, float, float] = MODEL_SPACING_MM,
    inplane_size: int = MODEL_INPLANE_SIZE,
    body_mask_fn: Callable[[np.ndarray, tuple[float, float, float]], np.ndarray] | None = None,
) -> Grid:
    """The model's grid for a patient: OpenKBP orientation, training spacing, centred on the body.

    ct: the patient's CT in HU, any grid.
    body_mask: the body on any grid; when None it is found by ``body_mask_fn`` (default
      ``features.body_mask_from_ct``) on a coarse grid at the model spacing covering the whole CT.
    Returns a grid of ``inplane_size`` x ``inplane_size`` x K voxels with spacing ``spacing_mm``
    along OpenKBP axes 0 (anterior -> posterior), 1 (right -> left), 2 (superior -> inferior),
    direction ``OPENKBP_DIRECTION``. In-plane it is centred on the body's bounding box (the body
    lies in the middle; where the body is smaller the rest is padding outside the CT, i.e. CT 0);
    along the slice axis it spans the CT's full superior-inferior extent (K = as many slices of
    ``spacing_mm[2]`` as fit, centred). A body wider than the grid is cropped, with a warning.
    """
    direction = OPENKBP_DIRECTION.copy()
    coarse = _covering_grid(ct.grid, direction, spacing_mm)
    if body_mask is None:
        body = _body_on(ct, coarse, body_mask_fn)
    else:
        body = resample_to(body_mask, coarse, "mask").array
    if not body.any():
        raise InputError("no body found in the CT (nothing above the body threshold)")
    # body voxels' physical positions (LPS), via the coarse grid's index -> physical matrix
    kji = np.argwhere(body)
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    points = (coarse.index_to_physical() @ ijk1.T).T[:, :3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2
    extent_ap, extent_rl = hi[1] - lo[1], hi[0] - lo[0]
    fov = (inplane_size - 1) * np.array(spacing_mm[:2])
    if extent_ap > fov[0] or extent_rl > fov[1]:
        log.warning(
            "body (%.0f x %.0f mm, A-P x R-L) is larger than the model field of view (%.0f x %.0f mm): cropped",
            extent_ap,
            extent_rl,
            fov[0],
            fov[1],
        )
    z_lo, z_hi = ct.grid.corners()[:, 2].min(), ct.grid.corners()[:, 2].max()
    n_slices = int(np.floor((z_hi - z_lo) / spacing_mm[2] + 1e-6)) + 1
    z_top = (z_lo + z_hi) / 2 + (n_slices - 1) * spacing_mm[2] / 2
    half = (inplane_size - 1) / 2
    origin = (
        centre[0] - half * spacing_mm[1],  # x (axis 1 runs +x)
        centre[1] - half * spacing_mm[0],  # y (axis 0 runs +y)
        z_top,  # axis 2 runs -z from the top slice
    )
    return Grid((inplane_size, inplane_size, n_slices), tuple(map(float, spacing_mm)), origin, direction)


def _covering_grid(ct_grid: Grid, direction: np.ndarray, spacing_mm: tuple[float, float, float]) -> Grid:
    """A grid with ``direction`` and ``spacing_mm`` (along its axes) that covers the CT's corners."""
    corners = ct_grid.corners()
    # coordinates of the corners along the new axes
    along = corners @ direction  # (8, 3): projection onto each axis direction
    lo, hi = along.min(axis=0), along.max(axis=0)
    size = tuple(int(np.floor((hi[n] - lo[n]) / spacing_mm[n])) + 1 for n in range(3))
    origin = direction @ lo
    return Grid(size, tuple(map(float, spacing_mm)), tuple(origin), direction.copy())


def _body_on(ct: Volume, grid: Grid, body_mask_fn) -> np.ndarray:
    """Body mask (K, J, I) of the HU ``ct`` resampled onto ``grid``."""
    if body_mask_fn is None:
        from .features import body_mask_from_ct as body_mask_fn
    ct_offset = resample_to(ct.with_array(hu_to_offset_ct(ct.array)), grid, "linear", 0.0).array
    body_ijk = body_mask_fn(ct_offset.transpose(2, 1, 0), grid.spacing)
    return np.asarray(body_ijk, dtype=bool).transpose(2, 1, 0)


# OpenKBP patients <-> volumes ----------------------------------------------------------------


def to_openkbp_patient(
    ct: Volume,
    structures: dict[str, Volume],
    grid: Grid,
    *,
    patient_id: str = "patient",
    possible_dose_mask: np.ndarray | None = None,
    body_mask_fn: Callable[[np.ndarray, tuple[float, float, float]], np.ndarray] | None = None,
) -> Patient:
    """Resample a patient onto ``grid`` (an OpenKBP-oriented grid) and build a ``Patient``.

    ct: CT in HU (any grid); it becomes offset CT (HU + 1024, >= 0) with 0 outside the CT.
    structures: model ROI name -> mask Volume (any grid), resampled with the ``"mask"`` rule.
    grid: a grid whose direction is ``OPENKBP_DIRECTION`` (``model_grid_for``).
    possible_dose_mask: bool (I, J, K) on ``grid``; default: ``body_mask_fn`` (default
      ``features.body_mask_from_ct``) of the resampled CT.
    Arrays of the Patient are the grid volumes transposed to the OpenKBP layout a[i, j, k].
    """
    if not np.allclose(np.asarray(grid.direction), OPENKBP_DIRECTION, atol=1e-6):
        raise ValueError("to_openkbp_patient needs a grid in the OpenKBP orientation (OPENKBP_DIRECTION)")
    ct_offset = resample_to(ct.with_array(hu_to_offset_ct(ct.array)), grid, "linear", 0.0, antialias=True)
    ct_ijk = np.ascontiguousarray(ct_offset.array.transpose(2, 1, 0), dtype=np.float32)
    masks = {
        name: np.ascontiguousarray(resample_to(vol, grid, "mask").array.transpose(2, 1, 0))
        for name, vol in structures.items()
    }
    if possible_dose_mask is None:
        if body_mask_fn is None:
            from .features import body_mask_from_ct as body_mask_fn
        possible_dose_mask = np.asarray(body_mask_fn(ct_ijk, grid.spacing), dtype=bool)
    return Patient(
        patient_id=patient_id,
        ct=ct_ijk,
        spacing_mm=tuple(grid.spacing),
        possible_dose_mask=possible_dose_mask,
        structures=masks,
        dose_gy=None,
        origin_mm=tuple(grid.origin),
        direction=np.asarray(grid.direction, float).copy(),
    )


def patient_grid(patient: Patient) -> Grid:
    """The grid of a ``Patient`` (its axis n is the grid's index axis n)."""
    return Grid(
        tuple(patient.shape), tuple(patient.spacing_mm), tuple(patient.origin_mm), patient.direction.copy()
    )


def patient_volume(patient: Patient, array_ijk: np.ndarray, description: str = "") -> Volume:
    """Wrap an (I, J, K) array on the patient's grid as a Volume ((K, J, I) array)."""
    return Volume.from_grid(
        np.ascontiguousarray(array_ijk.transpose(2, 1, 0)), patient_grid(patient), description
    )


def patient_to_volumes(patient: Patient) -> tuple[Volume, dict[str, Volume]]:
    """A Patient as a CT Volume in HU and one mask Volume per structure (its own geometry).

    Inverse of ``to_openkbp_patient`` on the patient's own grid: voxels with offset CT 0 (no data)
    become -1024 HU, which converts back to 0.
    """
    ct = patient_volume(patient, offset_ct_to_hu(patient.ct))
    masks = {name: patient_volume(patient, mask.astype(bool)) for name, mask in patient.structures.items()}
    return ct, masks
