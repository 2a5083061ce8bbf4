"""A DVH stream inside the structures (opt-in): one model's dose inside the patient's structures,
another's elsewhere.

The DVH score, and every DVH metric of a prediction's report, reads only the dose of the
structures' voxels (the organs at risk and the targets). Networks trained with the DVH term
(``mambadose train --dvh-loss W``) get those metrics right more often than the networks with the
best dose score over the whole possible-dose mask, and the other way round for the whole dose.
:func:`compose` therefore keeps the main model's dose outside the structures and, inside them,
mixes in the DVH model's::

    inside = (1 - weight) * main + weight * dvh
    dose   = w * inside + (1 - w) * main

with ``w`` = 1 inside the union of the structures, falling linearly to 0 over the first
``ramp_mm`` outside them (Euclidean distance, voxel spacing honoured), so the dose has no seam at
their edges, and the result zero outside the possible-dose mask. The DVH metrics of the result
are those of ``inside``; only the dose score pays for the structures' voxels.

Measured on the 33 OpenKBP validation patients (docs/experiments.md, "Session 18"): the shipped
ensemble with flip TTA as the main model, the mean of two DVH-term networks as the DVH model, weight
2/3, ramp 5 mm, then the PTV hot-end widening: DVH score 1.648 Gy per patient and 1.636 Gy pooled
against 1.694 / 1.685 Gy for the ensemble alone (widened), dose score 2.695 against 2.689 Gy. The
weight was chosen on those patients. Session 20 checked that choice on three networks trained
afterwards (``Resources/Models/MambaUNetV2_OpenKBP_dvh.safetensors``, shipped; ``--dvh-model dvh``):
DVH score 1.648 Gy pooled against 1.684 Gy, dose score 2.695 against 2.689 Gy (through
``predict-openkbp``), lower on both alternate halves of the patients (docs/experiments.md,
"Session 20").
Train your own with ``mambadose train --dvh-loss 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: Share of the DVH model's dose inside the structures (session 18's choice: one part the main
#: model's dose, two parts the DVH model's).
DEFAULT_WEIGHT: float = 2.0 / 3.0
#: Width (mm) of the linear ramp outside the structures.
DEFAULT_RAMP_MM: float = 5.0


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the DVH stream's weight must lie in [0, 1], got {weight}")


def structure_weight(
    structures: Mapping[str, np.ndarray], spacing_mm: tuple[float, float, float], ramp_mm: float, shape
) -> np.ndarray:
    """float64 (I, J, K): 1 inside the union of ``structures`` (bool masks), ``1 - d / ramp_mm`` at
    a distance ``d`` (mm) outside it, 0 from ``ramp_mm`` on (and everywhere without structures)."""
    if ramp_mm < 0:
        raise ValueError(f"ramp_mm must be >= 0, got {ramp_mm}")
    masks = [np.asarray(m, bool) for m in structures.values()]
    union = np.logical_or.reduce(masks) if masks else np.zeros(shape, bool)
    if ramp_mm == 0 or not union.any():
        return union.astype(np.float64)
    distance = ndimage.distance_transform_edt(~union, sampling=spacing_mm)
    return np.clip(1.0 - distance / ramp_mm, 0.0, 1.0)


def blend_inside(
    outside_gy: np.ndarray,
    inside_gy: np.ndarray,
    structures: Mapping[str, np.ndarray],
    possible_dose_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    ramp_mm: float = DEFAULT_RAMP_MM,
) -> np.ndarray:
    """float32 (I, J, K): ``inside_gy`` inside the structures, ``outside_gy`` from ``ramp_mm``
    outside them on, linear in between (:func:`structure_weight`); zero outside the mask."""
    w = structure_weight(structures, spacing_mm, ramp_mm, outside_gy.shape)
    out = w * np.asarray(inside_gy, np.float64) + (1.0 - w) * np.asarray(outside_gy, np.float64)
    return np.where(np.asarray(possible_dose_mask, bool), out, 0.0).astype(np.float32)


def compose(
    main_gy: np.ndarray,
    dvh_gy: np.ndarray,
    structures: Mapping[str, np.ndarray],
    possible_dose_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    weight: float = DEFAULT_WEIGHT,
    ramp_mm: float = DEFAULT_RAMP_MM,
) -> np.ndarray:
    """The main model's dose with the DVH model's mixed in inside the structures (module doc)."""
    _check_weight(weight)
    main = np.asarray(main_gy, np.float64)
    inside = (1.0 - weight) * main + weight * np.asarray(dvh_gy, np.float64)
    return blend_inside(main, inside, structures, possible_dose_mask, spacing_mm, ramp_mm)


@dataclass(frozen=True)
class Stream:
    """A loaded DVH-stream model: weights, card, the views its card asks for, and its weight."""

    model: Any
    card: dict
    views: tuple[str, ...]
    weight: float
    path: str


def load(path, device, weight: float = DEFAULT_WEIGHT) -> Stream:
    """Load the DVH-stream model at ``path`` (``weights.model_path_from_arg``) on ``device``."""
    from . import inference, weights

    _check_weight(weight)
    path = weights.model_path_from_arg(path)
    model, card = weights.load_model(path, device=str(device))
    views = tuple(inference.card_views(card))
    inference.check_slab_views(model, views)
    return Stream(model, card, views, float(weight), str(path))


def apply(stream: Stream, main_gy: np.ndarray, patient, **predict_kwargs) -> np.ndarray:
    """Predict ``patient`` with the stream's model (``inference.predict_patient`` with
    ``predict_kwargs``: device, tta, ...) and :func:`compose` it into ``main_gy``."""
    from . import inference

    dvh_gy = inference.predict_patient(
        stream.model, stream.card, patient, views=stream.views, **predict_kwargs
    )
    return compose(
        main_gy, dvh_gy, patient.structures, patient.possible_dose_mask, patient.spacing_mm, stream.weight
    )
