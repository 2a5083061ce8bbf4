"""Run a trained 2D dose model over a 3D volume: axial slices in batches, optional flip TTA.

Layout: features are float32 ``(C, I, J, K)`` in the OpenKBP layout (``k`` = axial slice); the
model maps ``(B, C, I, J)`` slices to ``(B, 1, I, J)`` dose on the normalised [-1, 1] scale, which
:func:`MambaDoseLib.features.denormalise_dose` turns into Gy.

Test-time augmentation (TTA) averages the model's output over in-plane flips of the input slices
(each output flipped back). ``tta_flips`` lists the flips as tuples of volume axes: ``()`` is the
identity, ``(1,)`` the left-right flip (axis 1), ``(0,)`` the anterior-posterior flip (axis 0).
The default is ``((), (1,))``: head-and-neck anatomy is roughly left-right symmetric but not
anterior-posterior symmetric. Pass :data:`FOUR_FLIPS` for all four in-plane flips. Under a flip
of axis 1, the channel pairs in ``swap_channels`` (e.g. right and left parotid masks) are exchanged
so the flipped input still describes a plausible patient (see :func:`lr_swap_pairs`).

The predicted dose is a model prediction for research, not a deliverable plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import InputError, MambaDoseError

log = logging.getLogger(__name__)

#: Identity + left-right flip (the default TTA).
LR_FLIPS: tuple[tuple[int, ...], ...] = ((), (1,))
#: All four in-plane flips.
FOUR_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (0, 1))


class PredictionCancelled(MambaDoseError):
    """The caller's ``cancel()`` returned True; no dose was produced."""


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``; ``"cuda"`` (error without a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MambaDoseError(
                "device 'cuda' requested but no CUDA GPU is available to PyTorch "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return torch.device("cuda")
    raise MambaDoseError(f"unknown device {name!r}: expected auto, cpu or cuda")


def lr_swap_pairs(channels: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of channels whose names differ only by ``Right`` <-> ``Left``."""
    index = {name: i for i, name in enumerate(channels)}
    pairs = []
    for name, i in index.items():
        if "Right" in name:
            j = index.get(name.replace("Right", "Left"))
            if j is not None:
                pairs.append((i, j))
    return pairs


def _flip_dims(flip: tuple[int, ...]) -> list[int]:
    """Volume axes (0 = I, 1 = J) -> dims of a (B, C, I, J) tensor."""
    if any(a not in (0, 1) for a in flip):
        raise ValueError(f"TTA flips may only use in-plane axes 0 and 1, got {flip}")
    return [a + 2 for a in flip]


def _run_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    flips: Sequence[tuple[int, ...]],
    swap_channels: Sequence[tuple[int, int]],
    use_autocast: bool,
) -> torch.Tensor:
    """Mean model output over ``flips``. x: (B, C, I, J) on the model's device -> (B, I, J) float32."""
    total = None
    for flip in flips:
        dims = _flip_dims(flip)
        xf = torch.flip(x, dims) if dims else x
        if 1 in flip and swap_channels:
            order = list(range(x.shape[1]))
            for i, j in swap_channels:
                order[i], order[j] = order[j], order[i]
            xf = xf[:, order]
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_autocast):
            y = model(xf)  # (B, 1, I, J)
        y = y.float()
        if dims:
            y = torch.flip(y, dims)
        total = y if total is None else total + y
    return (total / len(flips))[:, 0]


def predict_volume(
    model: torch.nn.Module,
    features: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    tta: bool = False,
    tta_flips: Sequence[tuple[int, ...]] = LR_FLIPS,
    swap_channels: Sequence[tuple[int, int]] = (),
    autocast: bool = True,
    denormalise: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Predict a dose volume (Gy) slice by slice.

    model: maps (B, C, I, J) -> (B, 1, I, J) normalised dose; it is put in eval mode and moved to
    ``device`` (default: where its parameters are). features: float32 (C, I, J, K).
    tta: average over ``tta_flips`` (see the module docstring). autocast: bf16 autocast on CUDA
    (ignored on CPU). denormalise: normalised -> Gy (default ``features.denormalise_dose``).
    progress(done_slices, total_slices) is called after each batch; ``cancel()`` is checked before
    each batch and raises :class:`PredictionCancelled` when it returns True.
    Returns float32 (I, J, K) dose in Gy, clipped at 0 (a dose is never negative).
    """
    if features.ndim != 4:
        raise InputError(f"features must be (C, I, J, K), got shape {features.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if denormalise is None:
        from .features import denormalise_dose as denormalise
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device).eval()
    flips = tuple(tta_flips) if tta else ((),)
    use_autocast = autocast and device.type == "cuda"

    n_slices = features.shape[3]
    out = np.empty(features.shape[1:], np.float32)  # (I, J, K), normalised
    with torch.inference_mode():
        for k0 in range(0, n_slices, batch_size):
            if cancel is not None and cancel():
                raise PredictionCancelled(f"prediction cancelled after {k0} of {n_slices} slices")
            k1 = min(k0 + batch_size, n_slices)
            batch = np.ascontiguousarray(np.moveaxis(features[..., k0:k1], 3, 0), np.float32)
            x = torch.from_numpy(batch).to(device, non_blocking=True)  # (B, C, I, J)
            y = _run_model(model, x, flips, swap_channels, use_autocast)  # (B, I, J)
            out[..., k0:k1] = np.moveaxis(y.cpu().numpy(), 0, 2)
            if progress is not None:
                progress(k1, n_slices)
    return np.maximum(np.asarray(denormalise(out), np.float32), 0.0)


def predict_patient(
    model: torch.nn.Module, card: Mapping[str, Any], patient: Any, **kwargs: Any
) -> np.ndarray:
    """Predict one patient's dose (Gy), zero outside ``patient.possible_dose_mask``.

    card: the model card (its ``"channels"`` name the input channels in order). patient: a
    :class:`MambaDoseLib.patient.Patient` on the model grid. kwargs go to :func:`predict_volume`;
    ``swap_channels`` defaults to the card's right/left channel pairs. Returns float32 (I, J, K).
    """
    from .features import build_features

    channels = tuple(card["channels"])
    features = build_features(patient, channels)
    kwargs.setdefault("swap_channels", lr_swap_pairs(channels))
    dose = predict_volume(model, features, **kwargs)
    dose[~np.asarray(patient.possible_dose_mask, bool)] = 0.0
    return dose
