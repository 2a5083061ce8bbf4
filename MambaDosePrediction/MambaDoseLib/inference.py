"""Run a trained 2D dose model over a 3D volume: slices in batches, in one or more orientations,
optional flip TTA.

Layout: features are float32 ``(C, I, J, K)`` in the OpenKBP layout (axis 0 anterior -> posterior,
1 right -> left, 2 superior -> inferior; ``k`` = axial slice); the model maps ``(B, C, H, W)``
slices to ``(B, 1, H, W)`` dose on the normalised [-1, 1] scale, which
:func:`MambaDoseLib.features.denormalise_dose` turns into Gy.

Views (slice orientations, :data:`VIEWS`): ``"axial"`` slices cut across axis 2 and are laid out
(rows, columns) = (A->P, R->L); ``"coronal"`` cut across axis 0, laid out (S->I, R->L);
``"sagittal"`` cut across axis 1, laid out (S->I, A->P). :func:`to_slices` and
:func:`from_slices` are the one place that defines these layouts; training (the slice files) and
prediction both use them. A model trained on several views predicts the volume once per view and
the predictions are averaged (multi-view prediction: each voxel gets the view of its axial,
coronal and sagittal neighbourhood). Slice sizes that the model cannot take (not a multiple of
``2**levels``) are padded by repeating the edge and cropped back.

Test-time augmentation (TTA) averages the model's output over flips of the input volume (each
output flipped back). ``tta_flips`` lists the flips as tuples of volume axes: ``()`` is the
identity, ``(1,)`` the left-right flip (axis 1), ``(0,)`` the anterior-posterior flip (axis 0).
The default is ``((), (1,))``: head-and-neck anatomy is roughly left-right symmetric but not
anterior-posterior symmetric. Pass :data:`FOUR_FLIPS` for all four in-plane flips (the default
of :func:`predict_patient` for networks trained with the anterior-posterior flip as well,
:func:`card_tta_flips`). Under a flip
of axis 1, the channel pairs in ``swap_channels`` (e.g. right and left parotid masks) are exchanged
so the flipped input still describes a plausible patient (see :func:`lr_swap_pairs`); an
ensemble can say per member whether its mirror swaps them (``member_swaps``: members trained
without the swap, :func:`card_member_tta_swaps`), and its members are then run in groups.

Slab models (``MambaUNetConfig.slab`` = k > 1, axial view only) take k consecutive slices at a
time: the range of slices wanted is covered by windows of k consecutive slices at stride
``max(1, k // 2)`` (the last window ending at the range's end; a range shorter than k is widened
within the volume, and a volume of fewer than k slices repeats its last slice), and each slice's
output is the mean over the windows that hold it (:func:`slab_windows`,
:func:`predict_in_slabs`; training's validation uses the same two).

The predicted dose is a model prediction for research, not a deliverable plan.
"""

from __future__ import annotations

import functools
import logging
import math
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

#: Slice orientations: the volume axis each one cuts across.
VIEWS: dict[str, int] = {"axial": 2, "coronal": 0, "sagittal": 1}
#: A slice's (rows, columns) as volume axes, per view (module docstring).
VIEW_PLANE: dict[str, tuple[int, int]] = {"axial": (0, 1), "coronal": (2, 1), "sagittal": (2, 0)}


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` as a tuple; InputError for an empty list, an unknown name or a repeat."""
    views = tuple(views)
    if not views:
        raise InputError(f"no views given (choose from {', '.join(VIEWS)})")
    for v in views:
        if v not in VIEWS:
            raise InputError(f"unknown view {v!r} (choose from {', '.join(VIEWS)})")
    if len(set(views)) != len(views):
        raise InputError(f"views repeat: {', '.join(views)}")
    return views


def parse_views(text: str) -> tuple[str, ...]:
    """Comma-separated view names (a CLI option) -> checked tuple (InputError naming the bad one)."""
    return check_views(v.strip() for v in text.split(",") if v.strip())


def lr_in_plane(view: str) -> bool:
    """Whether the right -> left axis (1) lies in the slices of ``view`` (as their columns)."""
    return 1 in VIEW_PLANE[view]


def to_slices(volume: np.ndarray, view: str) -> np.ndarray:
    """``(..., I, J, K)`` -> ``(N, ..., H, W)``: the slices of ``view`` in the order of the axis
    they cut (a transposed view of ``volume``, no copy)."""
    lead = volume.ndim - 3
    rows, cols = VIEW_PLANE[view]
    order = (lead + VIEWS[view], *range(lead), lead + rows, lead + cols)
    return np.transpose(volume, order)


def from_slices(slices: np.ndarray, view: str) -> np.ndarray:
    """Inverse of :func:`to_slices` for ``(N, H, W)`` slices -> ``(I, J, K)`` (no copy)."""
    rows, cols = VIEW_PLANE[view]
    return np.transpose(slices, np.argsort((VIEWS[view], rows, cols)))


def slices_with_voxels(mask: np.ndarray, view: str) -> np.ndarray:
    """Indices of the ``view`` slices of an (I, J, K) mask that hold any voxel of it."""
    return np.flatnonzero(to_slices(np.asarray(mask, bool), view).any(axis=(1, 2)))


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


def use_fast_cuda_math() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions, and cuDNN's autotuner: what training
    and the speed benchmarks run with on a GPU (bf16 autocast does the rest). Not used for
    prediction, whose float32 results stay comparable between CPU and GPU."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


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


def swap_order(n_channels: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Channel order ``0..n-1`` with each pair ``(i, j)`` exchanged (see :func:`lr_swap_pairs`)."""
    order = list(range(n_channels))
    for i, j in pairs:
        order[i], order[j] = order[j], order[i]
    return order


def _check_flips(flips: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    for flip in flips:
        if any(a not in (0, 1) for a in flip):
            raise ValueError(f"TTA flips may only use axes 0 and 1, got {flip}")
    return tuple(tuple(f) for f in flips)


def _flipped(
    features: np.ndarray, flip: tuple[int, ...], swap_channels: Sequence[tuple[int, int]]
) -> np.ndarray:
    """(C, I, J, K) features flipped along volume axes ``flip``; Right/Left channels exchanged
    under the left-right flip (axis 1)."""
    if not flip:
        return features
    out = np.flip(features, axis=[a + 1 for a in flip])
    if 1 in flip and swap_channels:
        out = out[swap_order(features.shape[0], swap_channels)]
    return out


def _configs(model: torch.nn.Module) -> list:
    """The model's configs: an ensemble's members' (``configs``), else ``[model.config]`` (None
    when the model has none)."""
    return getattr(model, "configs", None) or [getattr(model, "config", None)]


def _slice_multiple(model: torch.nn.Module) -> int:
    """Slice sizes the model takes are multiples of this (``2**levels`` for MambaUNetV2; for an
    ensemble, of its deepest member)."""
    levels = [c.levels for c in _configs(model) if isinstance(getattr(c, "levels", None), int)]
    return 2 ** max(levels) if levels else 1


def model_slab(model: torch.nn.Module) -> int:
    """Consecutive slices the model takes together (``model.config.slab``; 1 when absent); for an
    ensemble whose members take different slabs, the largest."""
    slabs = [getattr(c, "slab", 1) for c in _configs(model)]
    for slab in slabs:
        if not isinstance(slab, int) or isinstance(slab, bool) or slab < 1:
            raise ValueError(f"model config: slab must be a positive integer, got {slab!r}")
    return max(slabs)


def member_groups(
    model: torch.nn.Module, keys: Sequence[Any] | None = None
) -> list[tuple[torch.nn.Module, int, Any]]:
    """(module, members, key) per group of networks that take one slab and share a key (``keys``:
    one per network, e.g. whether its flip TTA swaps the Left/Right channels; None: one key):
    ``MambaUNetV2Ensemble.member_groups`` for an ensemble, ``[(model, 1, key)]`` for any other
    model. ValueError when ``keys`` does not hold one key per network."""
    groups = getattr(model, "member_groups", None)
    if callable(groups):
        return groups(keys)
    if keys is not None and len(keys) != 1:
        raise ValueError(f"{len(keys)} member keys for a single network")
    return [(model, 1, keys[0] if keys is not None else None)]


def check_slab_views(model: torch.nn.Module, views: Sequence[str]) -> None:
    """InputError when a slab model (:func:`model_slab` > 1; for an ensemble, any of its members)
    is asked for views other than axial alone: its slabs are consecutive axial slices."""
    slab = model_slab(model)
    if slab > 1 and tuple(views) != ("axial",):
        raise InputError(
            f"a slab model (slab={slab}: consecutive axial slices scanned together) predicts the "
            f"axial view only, not {', '.join(views)}"
        )


def slab_windows(index: np.ndarray, n: int, k: int) -> np.ndarray:
    """First slices (int64, ascending) of the windows of ``k`` consecutive slices that cover the
    slices ``index`` (ascending; empty: no window) of an axis of ``n`` slices.

    The range ``[index[0], index[-1]]`` is widened to ``k`` slices when shorter (about evenly on
    both sides, kept within ``max(n, k)`` slices: with ``n < k`` the windows reach past the last
    slice, which the caller repeats), then covered at stride ``max(1, k // 2)`` with the last
    window ending at the range's end.
    """
    if len(index) == 0:
        return np.zeros(0, np.int64)
    lo, hi = int(index[0]), int(index[-1])
    if hi - lo + 1 < k:
        lo = max(0, min(lo - (k - (hi - lo + 1)) // 2, max(n, k) - k))
        hi = lo + k - 1
    starts = list(range(lo, hi - k + 2, max(1, k // 2)))
    if starts[-1] != hi - k + 1:
        starts.append(hi - k + 1)
    return np.asarray(starts, np.int64)


def predict_in_slabs(
    out: np.ndarray,
    run: Callable[[np.ndarray], np.ndarray],
    index: np.ndarray,
    k: int,
    batch_size: int,
) -> np.ndarray:
    """Fill ``out`` (n, h, w) with a slab model's outputs over the windows of :func:`slab_windows`
    for the slices ``index``, each slice the mean over the windows that hold it (uniform weights);
    slices no window holds are left as they are. ``run(slices)`` takes the slice numbers of whole
    windows, window after window (int64 (m,), m a multiple of ``k``, in ``[0, n)``: past the last
    slice the last one is repeated) and returns their outputs (m, h, w); it is called with
    ``max(1, batch_size // k)`` windows at a time. Returns ``out``."""
    n = out.shape[0]
    starts = slab_windows(index, n, k)
    if starts.size == 0:
        return out
    total = np.zeros((max(n, k), *out.shape[1:]), np.float32)
    count = np.zeros(max(n, k), np.float32)
    per_call = max(1, batch_size // k)
    for b0 in range(0, starts.size, per_call):
        group = starts[b0 : b0 + per_call]
        slices = (group[:, None] + np.arange(k)).reshape(-1)
        y = run(np.minimum(slices, n - 1))  # (m, h, w)
        for j, start in enumerate(group):
            total[start : start + k] += y[j * k : (j + 1) * k]
            count[start : start + k] += 1.0
    held = count[:n] > 0
    out[held] = total[:n][held] / count[:n][held, None, None]
    return out


def predict_volume(
    model: torch.nn.Module,
    features: np.ndarray,
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    views: Sequence[str] = ("axial",),
    tta: bool = False,
    tta_flips: Sequence[tuple[int, ...]] = LR_FLIPS,
    swap_channels: Sequence[tuple[int, int]] = (),
    member_swaps: Sequence[bool] | None = None,
    autocast: bool = True,
    denormalise: Callable[[np.ndarray], np.ndarray] | None = None,
    within: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Predict a dose volume (Gy) slice by slice, averaged over ``views`` (and TTA flips).

    model: maps (B, C, H, W) -> (B, 1, H, W) normalised dose; it is put in eval mode and moved to
    ``device`` (default: where its parameters are). features: float32 (C, I, J, K).
    views: slice orientations (module docstring); the model card's ``"views"`` are the ones it
    was trained on. tta: average over ``tta_flips`` (module docstring); a left-right flip
    exchanges the channel pairs ``swap_channels``, for an ensemble only in the members whose
    ``member_swaps`` entry is True (one per member; None: in every member). autocast: bf16 autocast
    on CUDA (ignored on CPU). denormalise: normalised -> Gy (default
    ``features.denormalise_dose``). within: an optional (I, J, K) mask (the possible-dose mask):
    the dose is 0 outside it, and a slice of any view with no voxel of it is not computed (a 2D
    model's slices are independent, so the dose inside is unchanged; OpenKBP patients have no
    possible dose on about 40 % of their axial slices). progress(done_slices, total_slices) is
    called after each batch, counting the slices computed; ``cancel()`` is checked before each
    batch and raises :class:`PredictionCancelled` when it returns True. Returns float32 (I, J, K)
    dose in Gy, clipped at 0 (a dose is never negative).

    A slab model (``model.config.slab`` = k > 1, :func:`model_slab`) predicts axial slices only
    (InputError for other views) in windows of k consecutive slices (module docstring): the range
    from the first to the last wanted slice is computed, each slice as often as windows hold it
    (the count ``progress`` reports), ``batch_size // k`` windows (at least one) per batch. An
    ensemble whose members take different slabs (:func:`member_groups`) is predicted group by group,
    each group's mean weighted by its number of members, so the result is the mean over members.
    """
    if features.ndim != 4:
        raise InputError(f"features must be (C, I, J, K), got shape {features.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    views = check_views(views)
    check_slab_views(model, views)
    swap_keys = None if member_swaps is None else [bool(s) for s in member_swaps]
    groups = [
        (module, model_slab(module), size, swap_channels if key in (None, True) else ())
        for module, size, key in member_groups(model, swap_keys)
    ]
    if len(groups) == 1:  # one model, or one forward pass averaging the members: weight 1
        groups = [(groups[0][0], groups[0][1], 1, groups[0][3])]
    flips = _check_flips(tta_flips) if tta else ((),)
    if denormalise is None:
        from .features import denormalise_dose as denormalise
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device).eval()
    use_autocast = autocast and device.type == "cuda"
    multiple = _slice_multiple(model)
    if within is not None:
        within = np.asarray(within, bool)
        if within.shape != features.shape[1:]:
            raise InputError(f"within mask has shape {within.shape}, the features {features.shape[1:]}")

    def wanted(view: str, flip: tuple[int, ...]) -> np.ndarray:
        """Indices of the slices to compute: all, or those holding voxels of ``within``."""
        if within is None:
            return np.arange(features.shape[1 + VIEWS[view]])
        return slices_with_voxels(np.flip(within, axis=list(flip)) if flip else within, view)

    def computed(view: str, slab: int) -> int:
        """Slices a model of ``slab`` computes for ``view`` (a flip keeps the count)."""
        index = wanted(view, ())
        if slab == 1:
            return len(index)
        return slab * len(slab_windows(index, features.shape[1 + VIEWS[view]], slab))

    total_slices = len(flips) * sum(computed(v, slab) for v in views for _, slab, _, _ in groups)
    done = 0

    def run(module: torch.nn.Module, slices: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``module`` on ``slices[rows]`` ((N, C, h, w) slices) -> (len(rows), h, w) normalised dose."""
        nonlocal done
        if cancel is not None and cancel():
            raise PredictionCancelled(f"prediction cancelled after {done} of {total_slices} slices")
        h, w = slices.shape[2:]
        pad = ((0, 0), (0, 0), (0, -h % multiple), (0, -w % multiple))
        batch = np.ascontiguousarray(slices[rows], np.float32)
        if any(p[1] for p in pad):
            batch = np.pad(batch, pad, mode="edge")
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_autocast):
            y = module(x)  # (B, 1, H', W')
        result = y.float()[:, 0, :h, :w].cpu().numpy()
        done += len(rows)
        if progress is not None:
            progress(done, total_slices)
        return result

    total = np.zeros(features.shape[1:], np.float32)  # (I, J, K), normalised, weighted by members
    with torch.inference_mode():
        for module, slab, members, swaps in groups:
            for flip in flips:
                volume = _flipped(features, flip, swaps)
                for view in views:
                    slices = to_slices(volume, view)  # (N, C, H, W), a view of the array
                    n, _, h, w = slices.shape
                    index = wanted(view, flip)
                    out = np.zeros((n, h, w), np.float32)
                    if slab == 1:
                        for b0 in range(0, len(index), batch_size):
                            rows = index[b0 : b0 + batch_size]
                            out[rows] = run(module, slices, rows)
                    else:
                        predict_in_slabs(out, functools.partial(run, module, slices), index, slab, batch_size)
                    pred = from_slices(out, view)
                    if members != 1:
                        pred = pred * np.float32(members)
                    total += np.flip(pred, axis=list(flip)) if flip else pred
    mean = total / np.float32(len(flips) * len(views) * sum(members for _, _, members, _ in groups))
    dose = np.maximum(np.asarray(denormalise(mean), np.float32), 0.0)
    if within is not None:
        dose[~within] = 0.0
    return dose


def predict_patient(
    model: torch.nn.Module, card: Mapping[str, Any], patient: Any, **kwargs: Any
) -> np.ndarray:
    """Predict one patient's dose (Gy) on its own grid, zero outside ``patient.possible_dose_mask``.

    card: the model card (its ``"channels"`` name the input channels in order; its ``"views"``
    the slice orientations, default axial only; its ``"inplane_spacing_mm"``, when present, the
    common in-plane voxel size the model was trained on). patient: a
    :class:`MambaDoseLib.patient.Patient` (an OpenKBP patient, or one on the model grid). When the
    card has ``"inplane_spacing_mm"`` and the patient's in-plane grid differs from it, the patient
    is resampled onto it (``spacing.resample_patient_inplane``), predicted there, and the dose
    comes back to the patient's grid (``spacing.resample_dose_back`` within the resampled
    possible-dose mask, where the model was trained). kwargs go to
    :func:`predict_volume`; ``swap_channels`` defaults to the card's right/left channel pairs (none
    for a network trained to mirror without swapping them, :func:`card_tta_swaps_lr`; for an
    ensemble of both kinds, ``member_swaps`` says which members swap, :func:`card_member_tta_swaps`),
    ``tta_flips`` to the flips the network was trained with (:func:`card_tta_flips`) and,
    when the patient is not resampled, ``within`` to its possible-dose mask (slices without it are
    not computed).
    Returns float32 (I, J, K) on the patient's grid.
    """
    from .features import build_features
    from .spacing import resample_dose_back, resample_patient_inplane

    channels = tuple(card["channels"])
    spacing_mm = card_inplane_spacing(card)
    model_patient, inplane = patient, None
    if spacing_mm is not None:
        model_patient, inplane = resample_patient_inplane(patient, spacing_mm)
    features = build_features(model_patient, channels)
    swaps = card_member_tta_swaps(card)
    kwargs.setdefault("swap_channels", lr_swap_pairs(channels) if any(swaps) else ())
    if len(set(swaps)) > 1:  # an ensemble of networks mirrored with and without the swap
        kwargs.setdefault("member_swaps", swaps)
    kwargs.setdefault("views", card_views(card))
    kwargs.setdefault("tta_flips", card_tta_flips(card))
    resampled = inplane is not None and not inplane.is_identity
    if not resampled:
        # (after resampling, resample_dose_back may read model-grid voxels just outside the
        # resampled mask for patient voxels without a neighbour inside it: nothing is skipped)
        kwargs.setdefault("within", model_patient.possible_dose_mask)
    dose = predict_volume(model, features, **kwargs)
    if resampled:
        dose = resample_dose_back(dose, inplane, within=model_patient.possible_dose_mask)
    dose[~np.asarray(patient.possible_dose_mask, bool)] = 0.0
    return dose


def _card_augment(card: Mapping[str, Any]) -> Mapping[str, Any]:
    """The augmentation a network was trained with (card ``training.config.augment``; empty when
    the card does not record it)."""
    return ((card.get("training") or {}).get("config") or {}).get("augment") or {}


def card_tta_swaps_lr(card: Mapping[str, Any]) -> bool:
    """Whether the left-right flip TTA exchanges the Right/Left channels for this model.

    As its training's mirror did: ``False`` only for a network trained with the left-right flip and
    without the swap (``mambadose train --no-lr-swap``, card ``training.config.augment``), which saw
    mirrored patients with their names kept and ties a structure's dose to its name (e.g. the left
    parotid's stronger sparing in OpenKBP, docs/experiments.md "Sessions 13-15"); swapping under the
    TTA would average that away. ``True`` for every other card, including those that do not record their
    augmentation and networks trained without the flip (for them the swapped mirror is the input
    that looks like an unmirrored patient).
    """
    augment = _card_augment(card)
    return bool(augment.get("swap_lr_channels", True)) or not augment.get("flip_lr_p", 0.5)


def _member_cards(card: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """One card-like mapping per network (``{"training": summary}``) for an ensemble card
    (``"ensemble_size"``) whose ``training.members`` lists a summary per member; ``[card]`` for any
    other card; None for an ensemble card without those summaries (every ensemble shipped so far)."""
    size = card.get("ensemble_size")
    if not size:
        return [card]
    members = (card.get("training") or {}).get("members")
    if not isinstance(members, list) or len(members) != size:
        return None
    return [{"training": m if isinstance(m, Mapping) else {}} for m in members]


def card_member_tta_swaps(card: Mapping[str, Any]) -> list[bool]:
    """:func:`card_tta_swaps_lr` per network: for an ensemble card (``"ensemble_size"``), one entry
    per member, read from its ``training.members[i].config.augment`` (all True when the card does
    not list one summary per member, as for every ensemble shipped so far); for any other card,
    ``[card_tta_swaps_lr(card)]``."""
    cards = _member_cards(card)
    if cards is None:
        return [True] * int(card["ensemble_size"])
    return [card_tta_swaps_lr(c) for c in cards]


def card_tta_flips(card: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
    """The flips the TTA averages over for this model: :data:`FOUR_FLIPS` when every network was
    trained with the anterior-posterior flip as well (card ``training.config.augment.flip_ap_p`` >
    0, ``mambadose train --flip-ap-p``), so each flipped input is one it saw in training;
    :data:`LR_FLIPS` (the mirror alone) otherwise, and for cards that do not record their
    augmentation."""
    cards = _member_cards(card)
    return FOUR_FLIPS if cards and all(_card_augment(c).get("flip_ap_p", 0.0) for c in cards) else LR_FLIPS


def card_views(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The slice orientations a model was trained on (card ``"views"``; axial when absent)."""
    return check_views(card.get("views") or ("axial",))


def card_inplane_spacing(card: Mapping[str, Any]) -> float | None:
    """The common in-plane voxel size (mm) a model was trained on (card ``"inplane_spacing_mm"``);
    None when absent (trained on each patient's own grid). A value that is not a positive number
    raises WeightsError."""
    from .errors import WeightsError

    value = card.get("inplane_spacing_mm")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise WeightsError(f"model card: inplane_spacing_mm must be a positive number of mm, got {value!r}")
    return float(value)
