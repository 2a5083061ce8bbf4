"""Model input features: named channels computed from a ``Patient`` (one place for every formula).

A model is trained on an ordered list of channel names (``CHANNELS`` by default); the list is saved
in its model card, and ``build_features(patient, channels)`` computes exactly those channels, in
that order, as a float32 array ``(C, I, J, K)`` on the patient's grid (``k`` = axial slice).

Channel names and formulas (see also ``docs/features.md``):

- ``"ct"``: ``normalise_ct(ct)``: offset CT (HU + 1024) clipped to ``CT_RANGE = (0, 2500)`` and
  mapped linearly to [-1, 1].
- ``"ptv_map"``: each voxel inside a PTV holds ``prescription_gy / MAX_PRESCRIPTION_GY``
  (the highest prescription where PTVs overlap); 0 elsewhere. Range [0, 1].
- ``"possible_dose_mask"``: the possible-dose mask as 0 / 1.
- ``"mask_<OAR>"``: the OAR's mask as 0 / 1 (all zero when the OAR is not contoured).
- ``"psdm_<ROI>"``: prescription-scaled signed distance map, for OARs and targets alike::

      psdm = w * clip(d_mm, -PSDM_CLIP_MM, PSDM_CLIP_MM) / PSDM_CLIP_MM

  ``d_mm`` is the Euclidean signed distance (mm, voxel spacing honoured) from the voxel centre to
  the structure's boundary, negative inside, positive outside, 0 on the boundary voxels (SimpleITK
  ``SignedMaurerDistanceMap``, ``insideIsPositive=False``, ``squaredDistance=False``,
  ``useImageSpacing=True``); ``PSDM_CLIP_MM = 50``; ``w = prescription_gy / MAX_PRESCRIPTION_GY``
  for a target (1, 0.9, 0.8 for PTV70, PTV63, PTV56) and ``w = 1`` for an OAR. Range [-w, w].
  A structure that is absent (not contoured, or an empty mask) gives the "far" value ``+w``
  everywhere.
- ``"prior_dose"``: ``normalise_dose(patient.prior_dose_gy)`` inside the possible-dose mask, -1 (0 Gy)
  outside: the dose a first-stage model predicted, the input of a cascade's second stage
  (``benchmarks/cascade_priors.py``). A patient without one (``prior_dose_gy`` None) is refused.
- 2.5D names: ``"<channel>_prev"`` / ``"<channel>_next"`` is ``<channel>`` of slice ``k - 1`` /
  ``k + 1``, and ``"<channel>_prev<N>"`` / ``"<channel>_next<N>"`` of slice ``k - N`` / ``k + N``
  (N >= 2, so that every channel has one name; the first / last slice is repeated at the volume's ends), e.g. ``"ct_prev"``,
  ``"ptv_map_next2"``.

The dose target is ``normalise_dose(dose_gy)``: clipped to ``DOSE_RANGE_GY = (0, 80)`` Gy and
mapped linearly to [-1, 1]; ``denormalise_dose`` maps a prediction back to Gy (>= 0).

``body_mask_from_ct(ct, spacing_mm)`` makes a body mask from the CT alone, used as the
possible-dose mask when a patient (e.g. a clinic's CT) has none.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from .errors import InputError
from .patient import Patient
from .rois import MAX_PRESCRIPTION_GY, OAR_NAMES, PRESCRIPTION_GY, ROI_NAMES, TARGET_NAMES

#: Offset-CT window (HU + 1024) mapped to [-1, 1].
CT_RANGE: tuple[float, float] = (0.0, 2500.0)
#: Dose window (Gy) mapped to [-1, 1].
DOSE_RANGE_GY: tuple[float, float] = (0.0, 80.0)
#: Signed distances are clipped to +-PSDM_CLIP_MM (mm) and divided by it.
PSDM_CLIP_MM: float = 50.0
#: Offset-CT threshold (HU + 1024, i.e. HU -524) that separates the body from air in
#: ``body_mask_from_ct``; 500 to 800 give the same mean Dice within 0.0013 on the 169 OpenKBP
#: training patients (benchmarks/body_mask_dice.py, docs/features.md).
BODY_THRESHOLD: float = 500.0

#: The default, ordered channel list (20 channels).
CHANNELS: tuple[str, ...] = (
    ("ct", "ptv_map", "possible_dose_mask")
    + tuple(f"mask_{name}" for name in OAR_NAMES)
    + tuple(f"psdm_{name}" for name in ROI_NAMES)
)

#: The channel of a first-stage model's dose (a cascade's second stage; module doc).
PRIOR_DOSE = "prior_dose"

_NEIGHBOUR = re.compile(r"(?P<base>.+)_(?P<side>prev|next)(?P<n>[2-9]|[1-9][0-9]+)?")  # one spelling each


def _scale_to_unit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float32), lo, hi)
    return (x - lo) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)


def normalise_ct(ct: np.ndarray) -> np.ndarray:
    """Offset CT (HU + 1024, any shape) -> float32 in [-1, 1]: clip to ``CT_RANGE``, scale linearly."""
    return _scale_to_unit(ct, *CT_RANGE)


def normalise_dose(dose_gy: np.ndarray) -> np.ndarray:
    """Dose (Gy, any shape) -> float32 in [-1, 1]: clip to ``DOSE_RANGE_GY``, scale linearly."""
    return _scale_to_unit(dose_gy, *DOSE_RANGE_GY)


def denormalise_dose(x: np.ndarray) -> np.ndarray:
    """Inverse of ``normalise_dose`` (float32 Gy). Values above 1 map above 80 Gy (no clipping
    there); negative doses (x < -1) are set to 0."""
    lo, hi = DOSE_RANGE_GY
    dose = (np.asarray(x, dtype=np.float32) + np.float32(1.0)) * np.float32((hi - lo) / 2.0) + np.float32(lo)
    return np.maximum(dose, np.float32(0.0))


def ptv_map(patient: Patient) -> np.ndarray:
    """float32 (I, J, K): ``prescription_gy / MAX_PRESCRIPTION_GY`` inside each PTV (maximum where
    PTVs overlap), 0 elsewhere."""
    out = np.zeros(patient.shape, dtype=np.float32)
    for name in TARGET_NAMES:
        mask = patient.structures.get(name)
        if mask is not None:
            np.maximum(out, np.float32(PRESCRIPTION_GY[name] / MAX_PRESCRIPTION_GY) * mask, out=out)
    return out


def psdm_weight(roi_name: str) -> float:
    """PSDM weight ``w``: prescription / MAX_PRESCRIPTION_GY for a target, 1 for an OAR."""
    return PRESCRIPTION_GY[roi_name] / MAX_PRESCRIPTION_GY if roi_name in PRESCRIPTION_GY else 1.0


def signed_distance_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """float32 (I, J, K) Euclidean signed distance (mm) to the boundary of ``mask`` (bool, I, J, K):
    negative inside, positive outside, 0 on boundary voxels (SimpleITK SignedMaurerDistanceMap
    with the voxel spacing). The mask must not be empty."""
    import SimpleITK as sitk

    # SimpleITK's array order is (z, y, x) = reversed image axes; transposing keeps the spacing of
    # each array axis attached to that axis.
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing_mm))
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(distance).transpose(2, 1, 0).astype(np.float32)


def psdm(
    mask: np.ndarray | None,
    spacing_mm: tuple[float, float, float],
    weight: float = 1.0,
    clip_mm: float = PSDM_CLIP_MM,
    shape: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Prescription-scaled signed distance map, float32 (I, J, K) in [-weight, weight]:
    ``weight * clip(d_mm, -clip_mm, clip_mm) / clip_mm`` with ``d_mm`` from ``signed_distance_mm``.

    The distance is computed on the mask's bounding box grown by ``ceil(clip_mm / spacing) + 1``
    voxels per axis (cut at the volume's edges); every voxel outside that box lies more than
    ``clip_mm`` from the structure, so the result equals the full-volume computation.
    An absent (None) or empty mask gives ``+weight`` everywhere (``shape`` is needed for None).
    """
    if mask is None:
        if shape is None:
            raise ValueError("psdm: shape is needed when the mask is absent")
        return np.full(shape, np.float32(weight), dtype=np.float32)
    out = np.full(mask.shape, np.float32(weight), dtype=np.float32)
    occupied = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if occupied[0].size == 0:
        return out
    box = []
    for axis in range(3):
        margin = int(np.ceil(clip_mm / spacing_mm[axis])) + 1
        box.append(
            slice(max(0, occupied[axis][0] - margin), min(mask.shape[axis], occupied[axis][-1] + margin + 1))
        )
    box = tuple(box)
    distance = signed_distance_mm(mask[box], spacing_mm)
    out[box] = np.clip(distance, -clip_mm, clip_mm) * np.float32(weight / clip_mm)
    return out


def _base_channel(patient: Patient, name: str) -> np.ndarray:
    """One channel without a 2.5D suffix, float32 (I, J, K)."""
    if name == "ct":
        return normalise_ct(patient.ct)
    if name == "ptv_map":
        return ptv_map(patient)
    if name == "possible_dose_mask":
        return np.asarray(patient.possible_dose_mask, dtype=np.float32)
    if name == PRIOR_DOSE:
        if patient.prior_dose_gy is None:
            raise InputError(
                f"patient {patient.patient_id}: channel {PRIOR_DOSE!r} needs a first-stage dose "
                "(a cascade's second stage), and the patient has none"
            )
        prior = normalise_dose(patient.prior_dose_gy)
        prior[~np.asarray(patient.possible_dose_mask, bool)] = -1.0
        return prior
    if name.startswith("mask_") and name[5:] in ROI_NAMES:
        mask = patient.structures.get(name[5:])
        return np.zeros(patient.shape, np.float32) if mask is None else mask.astype(np.float32)
    if name.startswith("psdm_") and name[5:] in ROI_NAMES:
        roi = name[5:]
        return psdm(patient.structures.get(roi), patient.spacing_mm, psdm_weight(roi), shape=patient.shape)
    raise ValueError(f"unknown feature channel {name!r}")


def split_neighbour(name: str) -> tuple[str, int]:
    """A channel name's base channel and slice offset: ``"ct_prev"`` -> (``"ct"``, -1),
    ``"ptv_map_next2"`` -> (``"ptv_map"``, 2), ``"ct"`` -> (``"ct"``, 0)."""
    match = _NEIGHBOUR.fullmatch(name)
    if match is None:
        return name, 0
    n = int(match["n"] or 1)
    return match["base"], -n if match["side"] == "prev" else n


def shift_slices(volume: np.ndarray, offset: int) -> np.ndarray:
    """``out[..., k] = volume[..., clip(k + offset, 0, K - 1)]`` (edge slices repeated)."""
    k = np.clip(np.arange(volume.shape[-1]) + offset, 0, volume.shape[-1] - 1)
    return volume[..., k]


def check_channels(channels: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError naming the first channel name that ``build_features`` does not know."""
    known = set(CHANNELS) | {f"mask_{n}" for n in ROI_NAMES} | {PRIOR_DOSE}
    for name in channels:
        if split_neighbour(name)[0] not in known:
            raise ValueError(f"unknown feature channel {name!r}")


def build_features(patient: Patient, channels: tuple[str, ...] | list[str] = CHANNELS) -> np.ndarray:
    """float32 (C, I, J, K): the named channels of ``patient`` in the given order (module doc).

    Each base channel is computed once, also when several names (e.g. ``"ct"``, ``"ct_prev"``)
    use it. Raises ValueError for an unknown name.
    """
    check_channels(channels)
    out = np.empty((len(channels), *patient.shape), dtype=np.float32)
    computed: dict[str, np.ndarray] = {}
    for c, name in enumerate(channels):
        base, offset = split_neighbour(name)
        if base not in computed:
            computed[base] = _base_channel(patient, base)
        out[c] = shift_slices(computed[base], offset) if offset else computed[base]
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def body_mask_from_ct(ct: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Body mask (bool, I, J, K) from an offset CT (HU + 1024, float (I, J, K), k = axial slice).

    Steps: ``ct > BODY_THRESHOLD`` (HU -524: separates tissue from air and from the empty 0 of
    OpenKBP's missing CT) -> the largest 3D connected component (drops couch, immobilisation mask
    and noise when they do not touch the body) -> holes filled per axial slice (lungs, airways,
    sinuses enclosed in the slice). ``spacing_mm`` is accepted for the interface and currently
    unused (no step depends on the voxel size).

    Compared with OpenKBP's possible-dose mask it covers all CT slices, whereas that mask stops
    where the planning system's dose grid stops, which the CT does not show; no step guesses that
    extent (benchmarks/body_mask_dice.py, docs/features.md).
    """
    del spacing_mm  # the steps above are voxel-size independent
    body = _largest_component(np.asarray(ct) > BODY_THRESHOLD)
    for k in range(body.shape[2]):
        if body[:, :, k].any():
            body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body
