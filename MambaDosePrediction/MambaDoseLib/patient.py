"""The in-memory patient: dense arrays on one grid plus its geometry.

Array convention (the OpenKBP layout, also the model grid): ``array[i, j, k]`` with ``k`` the
axial slice index; ``spacing_mm[n]`` is the voxel size along axis ``n`` (OpenKBP's
``voxel_dimensions`` in file order). CT values are OpenKBP's offset CT numbers (HU + 1024, 0 where
there is no CT data). Dose in Gy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Physical (LPS, as ITK/DICOM) direction of the OpenKBP array axes, read off the data: axis 0 runs
#: anterior -> posterior (+y), axis 1 patient right -> left (+x), axis 2 superior -> inferior (-z).
#: Columns are the directions of axes 0, 1, 2. The model grid of ``predict`` uses the same layout,
#: so a clinic's CT is resampled into the orientation the network was trained on.
OPENKBP_DIRECTION: np.ndarray = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass
class Patient:
    """One patient on one voxel grid.

    patient_id: e.g. ``"pt_1"``.
    ct: float32 (I, J, K) offset CT numbers (HU + 1024).
    spacing_mm: voxel size (mm) along axes 0, 1, 2.
    possible_dose_mask: bool (I, J, K); where dose may be non-zero.
    structures: ROI name -> bool (I, J, K) mask, only for contoured ROIs (names from ``rois``).
    dose_gy: float32 (I, J, K) reference dose in Gy, or None when the patient has none.
    origin_mm: physical position (mm) of voxel (0, 0, 0); (0, 0, 0) for OpenKBP data.
    direction: 3x3 direction cosines, columns = physical direction of array axes 0, 1, 2.
    prior_dose_gy: float32 (I, J, K) dose in Gy predicted by a first-stage model, the input of a
        cascade's second stage (feature channel ``"prior_dose"``), or None.
    """

    patient_id: str
    ct: np.ndarray
    spacing_mm: tuple[float, float, float]
    possible_dose_mask: np.ndarray
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    dose_gy: np.ndarray | None = None
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: OPENKBP_DIRECTION.copy())
    prior_dose_gy: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ct.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    @property
    def contoured_rois(self) -> list[str]:
        return sorted(self.structures)
