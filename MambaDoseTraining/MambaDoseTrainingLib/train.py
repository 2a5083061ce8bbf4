"""Training loop of MambaUNetV2 on axial slices: resumable, time-limited, single or multi-GPU.

Recipe: SmoothL1 inside the possible-dose mask on the [-1, 1] dose scale (``loss_beta`` chosen on
purpose: 0.05 = 2 Gy), AdamW (no weight decay on norms, biases and parameters flagged
``_no_weight_decay``), linear warm-up then cosine annealing to 0 (per step), bf16 autocast on
CUDA, gradient clipping, validation by the benchmark's per-patient 3D dose score, best checkpoint
and early stopping on it. Optional experiment (``--dvh-loss W``, off by default): add W x
:func:`sorted_dvh_loss` over the structures of the input channels.

Entry points: :func:`run_training` (a :class:`TrainConfig`; optionally in-memory patients) for the
headless Slicer module and tests; the CLI is ``mambadose train`` (commands/train.py).

Resumability: ``checkpoint_last.pt`` is written atomically after every epoch and holds everything
needed to continue (weights, optimiser, scheduler, RNG states, epoch, best score, patience
counter, history). The order of the samples and the augmentation of epoch ``e`` come from
generators seeded by ``(seed, e, rank)``, so a resumed run repeats exactly what an uninterrupted
run would do. ``time_limit_s`` stops after the last epoch that fits (see
:func:`next_epoch_estimate`; 10 s are kept for the end of the call), so a command under a hard
wall-clock limit never dies mid-write. The first epoch of every call also pays the Triton
compilation of the Mamba kernels (~90 s on a fresh H100), so give ``--time-limit`` about two
minutes less than the command's own limit. ``--epochs`` may be raised when resuming: the cosine
schedule is then recomputed for the new length.

Multi-GPU: start the same command with ``torchrun --nproc_per_node N``; every rank holds the
training slices on its own GPU and takes a ``rank::N`` share of each epoch (batch size is per
rank); rank 0 builds the features, validates, logs and writes checkpoints.

Common in-plane spacing (``--inplane-spacing MM``): every training and validation patient is
resampled onto 128 x 128 axial voxels of MM mm (``MambaDoseLib.spacing``) before its slices are
built. Validation stays comparable with runs on the native grids: the dose predicted on the
resampled grid goes back to each patient's own grid (``spacing.resample_dose_back``), is zeroed
outside the native possible-dose mask and is scored against the native reference. The model card
records ``"inplane_spacing_mm"``, so prediction (``inference.predict_patient``) does the same.

Slab mode (``--slab K``, ``MambaUNetConfig.slab``; axial view only): every batch is made of slabs
of K consecutive kept slices of one patient (``dataset.balanced_epoch_slabs``), augmented as one
block each, the ranks of a multi-GPU run sharing the epoch slab by slab; the network's token
mixers scan each slab as one sequence. Validation predicts each patient in windows of K
consecutive slices as prediction does (``inference.predict_in_slabs``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from MambaDoseLib.errors import InputError
from MambaDoseLib.patient import Patient

from .augment import AugmentConfig, augment_batch
from .dataset import (
    SliceSet,
    balanced_epoch_slabs,
    prepare_slice_set,
    resolve_channels,
    shard_indices,
    slab_starts,
)

if TYPE_CHECKING:
    from MambaDoseLib.spacing import InplaneMap

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
MODEL_BEST = "model_best.safetensors"
#: Seconds kept free under --time-limit for the end of a call (curves, model export, exit).
END_RESERVE_S = 10.0
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_dose_score",
    "val_dvh_score",
    "lr",
    "slices_per_s",
    "epoch_time_s",
    "val_dvh_score_pooled",
    "val_time_s",
)
#: ``torch.compile`` modes of ``--compile-mode``; all but "default" replay CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


@dataclass
class TrainConfig:
    """Everything a training run needs; plain values only (JSON-able, stored in checkpoints).

    Model: ``mixer``, ``mixer_min_level``, ``scan_directions``, ``d_state``, ``model_channels``
    (UNet widths), ``slab`` (consecutive axial slices whose tokens each mixer scans together;
    ``batch_size`` a multiple of it, axial view only) and ``model_options`` (any other
    ``MambaUNetConfig`` field) go to ``MambaUNetConfig``; None = the model's default.
    Data: ``channels`` is a preset ("2d", "2.5d") or a comma-separated list of channel names;
    ``views`` the comma-separated slice orientations trained on (``inference.VIEWS``; the model
    card keeps them and prediction averages over them).
    ``slices_per_epoch`` caps an epoch; ``max_train_patients`` / ``max_val_patients`` take the
    first patients only (quick runs).
    ``inplane_spacing_mm``: resample every patient to this in-plane voxel size (mm; 128 x 128,
    centred, slices unchanged) for training and validation; None = each patient's own grid.
    Time: ``time_limit_s`` (wall seconds from the start of this call) stops cleanly between epochs.
    Weights: ``ema_decay`` > 0 keeps an exponential moving average of the weights and BatchNorm
    buffers (``torch.optim.swa_utils.AveragedModel``), updated after every optimiser step;
    validation, the best checkpoint and the exported model then use the average.
    Loss: ``dvh_loss_weight`` > 0 trains on ``masked_smooth_l1 + dvh_loss_weight *
    sorted_dvh_loss`` (the sorted-dose / 1-Wasserstein match of the dose distributions inside
    every structure of a slice, or of a slab's K slices together in slab mode, structures taken
    from the input's ``mask_*`` / target ``psdm_*`` channels; ``dvh_loss_rois`` "targets" or "oars"
    keeps the PTVs or the organs at risk only); an experiment outside the paper's recipe. 0 (default) = ``masked_smooth_l1`` alone.
    Speed: ``compile`` runs the training step through ``torch.compile`` with ``compile_mode``
    (:data:`COMPILE_MODES`; "reduce-overhead" and "max-autotune" replay CUDA graphs on a GPU).
    Neither is part of the architecture: a run may resume with or without them, in another mode.
    """

    train_cache: str = ""
    val_cache: str = ""
    out: str = "mambadose-train"
    channels: str = "2d"
    views: str = "axial"
    inplane_spacing_mm: float | None = None
    mixer: str = "mamba2"
    mixer_min_level: int | None = None
    scan_directions: int | None = None
    d_state: int | None = None
    model_channels: list[int] | None = None
    slab: int = 1
    model_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_epochs: int = 5
    patience: int = 10
    loss_beta: float = 0.05
    dvh_loss_weight: float = 0.0
    dvh_loss_rois: str = "all"
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False
    sync_bn: bool = False
    slices_per_epoch: int | None = None
    val_every: int = 1
    val_batch_size: int = 128
    max_train_patients: int | None = None
    max_val_patients: int | None = None
    device: str = "auto"
    workers: int = field(default_factory=default_workers)
    feature_cache: str | None = None
    time_limit_s: float | None = None
    resume: bool = False
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    @classmethod
    def from_args(cls, args: Any) -> TrainConfig:
        """From the ``mambadose train`` namespace (see commands/train.py)."""
        aug = (
            AugmentConfig.none()
            if args.no_augment
            else AugmentConfig(
                flip_lr_p=args.flip_lr_p,
                flip_ap_p=args.flip_ap_p,
                transpose_p=args.transpose_p,
                swap_lr_channels=args.lr_swap,
                rotate_p=args.rotate_p,
                rotate_deg=args.rotate_deg,
                scale_p=args.scale_p,
                scale_min=args.scale_range[0],
                scale_max=args.scale_range[1],
                shift_p=args.shift_p,
                shift_frac=args.shift_frac,
            )
        )
        return cls(
            train_cache=str(args.train_cache),
            val_cache=str(args.val_cache),
            out=str(args.out),
            channels=args.channels,
            views=args.views,
            inplane_spacing_mm=args.inplane_spacing,
            mixer=args.mixer,
            mixer_min_level=args.mixer_min_level,
            scan_directions=args.scan_directions,
            d_state=args.d_state,
            model_channels=list(args.model_channels) if args.model_channels else None,
            slab=args.slab,
            model_options=dict(args.model_option or {}),
            batch_size=args.batch_size,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            patience=args.patience,
            loss_beta=args.loss_beta,
            dvh_loss_weight=args.dvh_loss,
            dvh_loss_rois=args.dvh_loss_rois,
            grad_clip=args.grad_clip,
            ema_decay=args.ema,
            seed=args.seed,
            compile=args.compile,
            compile_mode=args.compile_mode,
            channels_last=args.channels_last,
            sync_bn=args.sync_bn,
            slices_per_epoch=args.slices_per_epoch,
            val_every=args.val_every,
            val_batch_size=args.val_batch_size,
            max_train_patients=args.max_train_patients,
            max_val_patients=args.max_val_patients,
            device=args.device,
            workers=args.workers,
            feature_cache=str(args.feature_cache) if args.feature_cache else None,
            time_limit_s=args.time_limit,
            resume=args.resume,
            progress=not args.no_progress,
            augment=aug,
        )

    def check(self) -> None:
        """Raise InputError for values no run can use."""
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "val_every": self.val_every,
            "val_batch_size": self.val_batch_size,
            "patience": self.patience,
            "slab": self.slab,
        }
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr <= 0 or self.loss_beta <= 0:
            raise InputError(f"--lr and --loss-beta must be > 0, got {self.lr} and {self.loss_beta}")
        if not (math.isfinite(self.dvh_loss_weight) and self.dvh_loss_weight >= 0):
            raise InputError(f"--dvh-loss must be a finite number >= 0, got {self.dvh_loss_weight}")
        if self.dvh_loss_rois not in DVH_LOSS_ROIS:
            raise InputError(
                f"--dvh-loss-rois must be one of {', '.join(DVH_LOSS_ROIS)}, got {self.dvh_loss_rois!r}"
            )
        if self.dvh_loss_rois != "all" and self.dvh_loss_weight == 0:
            raise InputError(f"--dvh-loss-rois {self.dvh_loss_rois} has no effect without --dvh-loss W > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"--ema must lie in [0, 1), got {self.ema_decay}")
        if self.warmup_epochs < 0:
            raise InputError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.slices_per_epoch is not None and self.slices_per_epoch < 1:
            raise InputError(f"--slices-per-epoch must be >= 1, got {self.slices_per_epoch}")
        if self.inplane_spacing_mm is not None and not (
            math.isfinite(self.inplane_spacing_mm) and self.inplane_spacing_mm > 0
        ):
            raise InputError(
                f"--inplane-spacing must be a positive number of mm, got {self.inplane_spacing_mm}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise InputError(f"--compile-mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and not self.compile:
            raise InputError(f"--compile-mode {self.compile_mode} needs --compile")
        views = self.view_names()
        if "slab" in self.model_options:
            raise InputError("the slab size is set by --slab, not --model-option slab=...")
        if self.batch_size % self.slab:
            raise InputError(
                f"--batch-size {self.batch_size} is not a multiple of --slab {self.slab} "
                "(a batch is made of whole slabs)"
            )
        if self.slices_per_epoch is not None and self.slices_per_epoch < self.slab:
            raise InputError(
                f"--slices-per-epoch {self.slices_per_epoch} is less than one slab of --slab {self.slab} "
                "slices: an epoch draws whole slabs"
            )
        if self.channels_last and self.model_options.get("conv_dims") == 3:
            raise InputError("--channels-last is for 2D convolutions, not --model-option conv_dims=3")
        if self.slab > 1 and views != ("axial",):
            raise InputError(f"--slab {self.slab} works on axial slices only, not --views {self.views}")

    @property
    def cudagraphs(self) -> bool:
        """Whether the compiled training step replays CUDA graphs (on a GPU; inductor ignores
        them on the CPU): ``compile`` with a mode other than "default"."""
        return self.compile and self.compile_mode != "default"

    def view_names(self) -> tuple[str, ...]:
        """The slice orientations, from the comma-separated ``views``."""
        from MambaDoseLib.inference import parse_views

        try:
            return parse_views(self.views)
        except InputError as exc:
            raise InputError(f"--views {self.views!r}: {exc}") from exc

    def channel_names(self) -> tuple[str, ...]:
        """Input channel names: a preset ("2d", "2.5d") or the comma-separated list
        (``dataset.resolve_channels``: a preset inside the list stands for its channels)."""
        return resolve_channels(self.channels)


# --------------------------------------------------------------------------- small pieces


def masked_smooth_l1(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, beta: float
) -> torch.Tensor:
    """SmoothL1 (Huber with threshold ``beta``) averaged over the mask, in float32.

    pred, target: (B, 1, H, W) on the [-1, 1] dose scale (1 unit = 40 Gy, so beta 0.05 = 2 Gy);
    weight: (B, 1, H, W) in [0, 1] (the possible-dose mask, fractional at augmented edges).
    Returns ``sum(w * l) / sum(w)``, a scalar.
    """
    loss = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=beta)
    w = weight.float()
    return (loss * w).sum() / w.sum().clamp_min(1.0)


#: Which structures the DVH term matches (``--dvh-loss-rois``).
DVH_LOSS_ROIS = ("all", "targets", "oars")


def roi_channel_indices(channels: Sequence[str], rois: str = "all") -> tuple[list[int], list[int]]:
    """Indices of the input channels that give structure masks (see :func:`roi_masks_from_features`):
    (``mask_<ROI>`` channels, ``psdm_<target>`` channels of targets without a ``mask_`` channel).
    Neighbour-slice channels (``_prev`` / ``_next``, any offset) are not used. ``rois``: "all",
    "targets" (the PTVs only) or "oars" (the organs at risk only), as in :data:`DVH_LOSS_ROIS`."""
    from MambaDoseLib.features import split_neighbour
    from MambaDoseLib.rois import OAR_NAMES, TARGET_NAMES

    def own_slice(name: str) -> bool:
        return split_neighbour(name)[1] == 0

    if rois not in DVH_LOSS_ROIS:
        raise ValueError(f"rois must be one of {', '.join(DVH_LOSS_ROIS)}, got {rois!r}")
    names = list(channels)
    mask_idx = [i for i, n in enumerate(names) if n.startswith("mask_") and own_slice(n)]
    masked = {names[i][len("mask_") :] for i in mask_idx}
    if rois != "all":  # keep the masks of one kind; target distance maps only for "targets"
        kind = TARGET_NAMES if rois == "targets" else OAR_NAMES
        mask_idx = [i for i in mask_idx if names[i][len("mask_") :] in kind]
    psdm_idx = [
        i
        for i, n in enumerate(names)
        if n.startswith("psdm_")
        and own_slice(n)
        and n[len("psdm_") :] in TARGET_NAMES
        and n[len("psdm_") :] not in masked
        and rois != "oars"
    ]
    return mask_idx, psdm_idx


def roi_masks_from_indices(
    x: torch.Tensor, mask_idx: torch.Tensor | Sequence[int], psdm_idx: torch.Tensor | Sequence[int]
) -> torch.Tensor | None:
    """Structure masks (B, R, H, W) bool from the channels chosen by :func:`roi_channel_indices`
    (``mask`` channels > 0.5, then ``psdm`` channels <= 0); None when both lists are empty."""
    parts = []
    if len(mask_idx):
        idx = torch.as_tensor(mask_idx, dtype=torch.long, device=x.device)
        parts.append(x.index_select(1, idx) > 0.5)
    if len(psdm_idx):
        idx = torch.as_tensor(psdm_idx, dtype=torch.long, device=x.device)
        parts.append(x.index_select(1, idx) <= 0)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def roi_masks_from_features(x: torch.Tensor, channels: Sequence[str]) -> torch.Tensor | None:
    """Structure masks (B, R, H, W) bool from an input batch ``x`` (B, C, H, W) with channel names
    ``channels``, possibly augmented (interpolated): ``x[:, c] > 0.5`` for every ``mask_<ROI>``
    channel, and ``x[:, c] <= 0`` (inside or on the boundary) for every ``psdm_<target>`` channel
    whose target has no ``mask_`` channel; ``_prev`` / ``_next`` channels are ignored. None when
    no channel gives a structure."""
    return roi_masks_from_indices(x, *roi_channel_indices(channels))


def sorted_dvh_loss(
    pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, min_voxels: int = 8, group: int = 1
) -> torch.Tensor:
    """Differentiable DVH match: mean over (sample, structure) pairs of the 1-Wasserstein distance
    between the predicted and the reference dose distributions inside the structure, in float32.

    pred, target: (B, 1, H, W) on the [-1, 1] dose scale; masks: (B, R, H, W) bool. A sample is
    ``group`` consecutive rows of the batch taken as one volume (slab mode: the K slices of a slab,
    so the match is over the structure's voxels in the whole slab, a 3D DVH); B must be a multiple
    of ``group``. For every pair with at least ``min_voxels`` voxels, the predicted and the
    reference values inside the mask are sorted (ascending) and the mean absolute difference of
    the two sorted vectors is taken (independent of where in the structure a dose lies, like a
    DVH). Returns the mean over those pairs; 0 (still connected to ``pred``) when there is none.
    """
    r = masks.shape[1]
    if group < 1 or masks.shape[0] % group:
        raise ValueError(f"batch of {masks.shape[0]} rows is not made of groups of {group}")
    b = masks.shape[0] // group
    n = group * masks.shape[-2] * masks.shape[-1]
    # (B, R, H, W) -> (b, R, group * H * W): the structure's voxels over the group's rows
    m = masks.reshape(b, group, r, -1).transpose(1, 2).reshape(b, r, n)
    p = pred.float().reshape(b, 1, n).expand(b, r, n)
    t = target.float().reshape(b, 1, n).expand(b, r, n)
    inf = torch.full((), math.inf, dtype=torch.float32, device=pred.device)  # made there: no copy, no sync
    # outside the mask +inf, so that the voxels inside come first after an ascending sort
    sp = torch.sort(torch.where(m, p, inf), dim=-1).values
    st = torch.sort(torch.where(m, t.detach(), inf), dim=-1).values
    count = m.sum(dim=-1)  # (B, R)
    pos = torch.arange(n, device=pred.device) < count.unsqueeze(-1)  # (B, R, N)
    zero = torch.zeros((), dtype=torch.float32, device=pred.device)
    diff = (torch.where(pos, sp, zero) - torch.where(pos, st, zero)).abs()
    per_pair = diff.sum(dim=-1) / count.clamp_min(1)
    valid = count >= min_voxels
    return torch.where(valid, per_pair, zero).sum() / valid.sum().clamp_min(1)


def make_ema(model: torch.nn.Module, decay: float) -> torch.nn.Module | None:
    """An exponential moving average of ``model``'s parameters and buffers (BatchNorm statistics
    included), ``avg = decay * avg + (1 - decay) * current`` after each update; None when
    ``decay`` is 0. PyTorch's ``AveragedModel`` with ``get_ema_multi_avg_fn``."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def lr_factor(step: int, steps_per_epoch: int, warmup_epochs: int, epochs: int) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then cosine to 0."""
    warm = warmup_epochs * steps_per_epoch
    total = max(1, epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices/kernels; none on norms, biases (ndim <= 1) and
    parameters flagged ``_no_weight_decay`` (Mamba's A_log, D, dt_bias)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def rng_state() -> dict[str, Any]:
    """RNG states of python / numpy / torch / CUDA as values ``torch.load(weights_only=True)`` reads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """Seed of one generator of one epoch on one rank (fixed, so resumes repeat exactly)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_history_csv(history: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: Path) -> None:
    """curves.png: training loss (left) and validation scores (right) against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("masked SmoothL1 ([-1, 1] dose scale)")
    val = [h for h in history if _finite(h.get("val_dose_score"))]
    ax_score.plot([h["epoch"] for h in val], [h["val_dose_score"] for h in val], "o-", label="dose score")
    ax_score.plot([h["epoch"] for h in val], [h["val_dvh_score"] for h in val], "s-", label="DVH score")
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel("validation score (Gy)")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# --------------------------------------------------------------------------- distributed


@dataclass
class Runtime:
    """Where this process runs: device, rank, world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device_name: str) -> Runtime:
    """Single process, or one rank of a torchrun job (WORLD_SIZE / RANK / LOCAL_RANK set)."""
    from MambaDoseLib.inference import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve_device(device_name))
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(device, rank, world, local)


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_object(rt: Runtime, obj: Any) -> Any:
    if not rt.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_slice_set(rt: Runtime, data: SliceSet | None) -> SliceSet:
    """Rank 0's slices copied to every rank's device (NCCL broadcast, no second build)."""
    import torch.distributed as dist

    meta = None
    if rt.is_main:
        meta = (data.patient_ids, data.channels, tuple(data.features.shape), data.views)
    patient_ids, channels, shape, views = _broadcast_object(rt, meta)
    if not rt.is_main:
        n, c, h, w = shape
        d = rt.device
        data = SliceSet(
            patient_ids,
            channels,
            torch.empty(shape, dtype=torch.float16, device=d),
            torch.empty((n, h, w), dtype=torch.float16, device=d),
            torch.empty((n, h, w), dtype=torch.bool, device=d),
            torch.empty(n, dtype=torch.int64, device=d),
            torch.empty(n, dtype=torch.int64, device=d),
            torch.empty(n, dtype=torch.int64, device=d),
            views,
        )
    for t in (data.features, data.dose, data.mask, data.patient_index, data.slice_index, data.view_index):
        if t.dtype == torch.bool:
            u = t.view(torch.uint8)
            dist.broadcast(u, src=0)
        else:
            dist.broadcast(t, src=0)
    return data


# --------------------------------------------------------------------------- model


def build_model_config(cfg: TrainConfig, in_channels: int):
    """``MambaUNetConfig`` from the run config; a CLI option the model lacks is an InputError.
    ``--compile`` picks the PyTorch scan unless ``--backend`` says otherwise."""
    from MambaDoseLib.model import MambaUNetConfig

    known = {f.name for f in dataclasses.fields(MambaUNetConfig)}
    kwargs: dict[str, Any] = {"in_channels": in_channels, "mixer": cfg.mixer}
    optional = {
        "mixer_min_level": cfg.mixer_min_level,
        "scan_directions": cfg.scan_directions,
        "d_state": cfg.d_state,
        "channels": tuple(cfg.model_channels) if cfg.model_channels else None,
        "slab": cfg.slab,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if cfg.compile:
        # Compiled, the PyTorch scan fuses with the rest of the network: 921 training slices/s vs
        # 613 for the compiled Triton scan on one H100 (benchmarks/results/2026-11-27-session4).
        kwargs["backend"] = "torch"
    kwargs.update(cfg.model_options)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(
            f"model option(s) {', '.join(unknown)} not in MambaUNetConfig "
            f"(fields: {', '.join(sorted(known))})"
        )
    try:
        return MambaUNetConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model options: {exc}") from exc


def _model_config_dict(model_config) -> dict:
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    return json.loads(json.dumps(asdict(model_config), default=list))


def _architecture(config: dict) -> dict:
    """A model config without its scan backend: a run may resume with another backend (e.g. with
    or without ``--compile``), the weights being the same. Fields missing from an older saved
    config (e.g. ``dropout``, added in session 5) count as their defaults."""
    from MambaDoseLib.model import MambaUNetConfig

    full = MambaUNetConfig.from_dict(config).to_dict()  # missing fields filled with their defaults
    return {k: v for k, v in full.items() if k != "backend"}


# --------------------------------------------------------------------------- validation


@dataclass
class ValReference:
    """What scoring one validation patient needs (host arrays, no CT).

    dose_gy: float32 (I, J, K) reference; possible_dose_mask: bool (I, J, K); structures: ROI ->
    bool (I, J, K); ref_metrics: the reference's challenge DVH metrics (computed once); all on the
    patient's own grid. inplane: the map of the grid the slices were built on (None: the
    patient's own grid), to bring the predicted dose back; inplane_pdm: bool (size, size, K), the
    possible-dose mask on that grid (``spacing.resample_mask_inplane``).
    """

    patient_id: str
    dose_gy: np.ndarray
    possible_dose_mask: np.ndarray
    structures: dict[str, np.ndarray]
    voxel_volume_mm3: float
    ref_metrics: dict
    ref_ptv: dict[str, dict[str, float]]
    inplane: InplaneMap | None = None
    inplane_pdm: np.ndarray | None = None


def make_val_reference(patient: Patient, inplane_spacing_mm: float | None = None) -> ValReference:
    """What scoring ``patient`` (on its own grid) needs; ``inplane_spacing_mm``: the slices were
    built on that common in-plane grid (``spacing.resample_patient_inplane``)."""
    from MambaDoseLib.metrics import openkbp_dvh_metrics
    from MambaDoseLib.rois import PRESCRIPTION_GY
    from MambaDoseLib.spacing import inplane_map_for, resample_mask_inplane

    dose = np.asarray(patient.dose_gy, np.float32)
    inplane = None
    if inplane_spacing_mm is not None:
        inplane = inplane_map_for(patient, inplane_spacing_mm)
        inplane = None if inplane.is_identity else inplane
    ref_ptv = {}
    for roi, mask in patient.structures.items():
        if roi in PRESCRIPTION_GY:
            ref_ptv[roi] = _ptv_summary(dose, mask, patient.voxel_volume_mm3, PRESCRIPTION_GY[roi])
    return ValReference(
        patient.patient_id,
        dose,
        np.asarray(patient.possible_dose_mask, bool),
        dict(patient.structures),
        patient.voxel_volume_mm3,
        openkbp_dvh_metrics(dose, patient.structures, patient.voxel_volume_mm3),
        ref_ptv,
        inplane,
        None if inplane is None else resample_mask_inplane(patient.possible_dose_mask, inplane),
    )


def _ptv_summary(
    dose: np.ndarray, mask: np.ndarray, voxel_volume_mm3: float, prescription_gy: float
) -> dict[str, float]:
    from MambaDoseLib.metrics import roi_metrics

    m = roi_metrics(dose, mask, voxel_volume_mm3, prescription_gy)
    return {"D95": float(m["D95"]), "HI": float(m["HI"]), "rx": float(prescription_gy)}


def _forward_slices(
    model: torch.nn.Module, features: torch.Tensor, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """The model on a batch of slices (B, C, H, W) -> float32 (B, H, W) normalised, on the CPU.
    Same autocast choice as ``inference.predict_volume`` (bf16 on CUDA)."""
    x = features.to(device).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y = model(x)
    return y.float()[:, 0].cpu()


def predict_rows(
    model: torch.nn.Module, features: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """Model output for every row of ``features`` (N, C, H, W) -> float32 (N, H, W) normalised,
    on the CPU. Same autocast choice as ``inference.predict_volume`` (bf16 on CUDA)."""
    model.eval()
    out = torch.empty(features.shape[0], *features.shape[2:], dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, features.shape[0], batch_size):
            y = _forward_slices(model, features[start : start + batch_size], device, channels_last)
            out[start : start + y.shape[0]] = y
    return out


def predict_rows_in_slabs(
    model: torch.nn.Module,
    data: SliceSet,
    refs: Sequence[ValReference],
    slab: int,
    batch_size: int,
    device: torch.device,
    channels_last: bool,
) -> torch.Tensor:
    """Like :func:`predict_rows` for a slab model (axial rows only): each patient is predicted as
    ``inference.predict_volume`` predicts it, in windows of ``slab`` consecutive slices over the
    range of its kept slices (``inference.predict_in_slabs``), each row the mean over the windows
    that hold it. The axis length comes from ``refs`` (the grid the slices were built on). A
    window slice that is not a kept row (a gap in the possible-dose mask, or a range of fewer than
    ``slab`` kept slices widened) takes the features of the next kept slice (the last one past
    the end), where prediction would read the volume's own slice."""
    from MambaDoseLib.inference import predict_in_slabs

    model.eval()
    out = torch.zeros(len(data), *data.features.shape[2:], dtype=torch.float32)
    patient_index = data.patient_index.cpu().numpy()
    slice_index = data.slice_index.cpu().numpy()
    with torch.inference_mode():
        for number, ref in enumerate(refs):
            rows = np.flatnonzero(patient_index == number)  # in slice order
            if rows.size == 0:
                continue
            kept = slice_index[rows]
            n = (ref.dose_gy.shape if ref.inplane is None else ref.inplane.resampled_shape)[2]
            if kept.size < slab or np.any(np.diff(kept) != 1):
                log.warning(
                    "validation patient %s: %d kept slices%s; its windows of %d take the next kept "
                    "slice where a slice is missing (prediction reads the volume's own)",
                    ref.patient_id, kept.size,
                    " with gaps" if np.any(np.diff(kept) != 1) else "", slab,
                )  # fmt: skip

            def run(slices: np.ndarray, rows=rows, kept=kept) -> np.ndarray:
                nearest = rows[np.minimum(np.searchsorted(kept, slices), kept.size - 1)]
                picked = torch.from_numpy(nearest).to(data.features.device)
                return _forward_slices(model, data.features[picked], device, channels_last).numpy()

            volume = np.zeros((n, *data.features.shape[2:]), np.float32)
            predict_in_slabs(volume, run, kept, slab, batch_size)
            out[torch.from_numpy(rows)] = torch.from_numpy(volume[kept])
    return out


def dose_volume_from_rows(
    pred_rows: np.ndarray,
    slice_index: np.ndarray,
    ref: ValReference,
    view_index: np.ndarray | None = None,
    views: Sequence[str] = ("axial",),
) -> np.ndarray:
    """Predicted dose (Gy) on the patient's own grid from normalised rows (n, H, W): row r is
    slice ``slice_index[r]`` of view ``views[view_index[r]]`` (default: all axial) of the grid
    the slices were built on (``ref.inplane``'s resampled grid, or the patient's own).

    Each voxel averages the views whose kept slices cover it (every possible-dose voxel lies on a
    kept slice of each view), then is denormalised and clipped at 0 as
    ``inference.predict_volume`` does; a voxel no kept slice covers has no prediction (0 Gy).
    From a resampled grid the dose goes back with ``spacing.resample_dose_back`` within the
    resampled possible-dose mask (``ref.inplane_pdm``), as ``inference.predict_patient`` does.
    Zero outside the patient's own possible-dose mask."""
    from MambaDoseLib.features import denormalise_dose
    from MambaDoseLib.inference import to_slices
    from MambaDoseLib.spacing import resample_dose_back

    if view_index is None:
        view_index = np.zeros(len(slice_index), np.int64)
    inplane = ref.inplane
    shape = ref.dose_gy.shape if inplane is None else inplane.resampled_shape
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)  # views covering each voxel
    for number, view in enumerate(views):
        sel = view_index == number
        target = to_slices(total, view)  # a view of total: adding into it adds into total
        h, w = target.shape[1:]
        target[slice_index[sel]] += pred_rows[sel][:, :h, :w]  # rows may be padded (dataset)
        to_slices(count, view)[slice_index[sel]] += 1.0
    covered = count > 0
    mean = total / np.maximum(count, 1.0)
    dose = np.maximum(np.asarray(denormalise_dose(mean), np.float32), 0.0)
    dose[~covered] = 0.0
    if inplane is not None:
        dose = resample_dose_back(dose, inplane, within=ref.inplane_pdm)
    dose[~ref.possible_dose_mask] = 0.0
    return dose


def validate(
    model: torch.nn.Module,
    data: SliceSet,
    refs: Sequence[ValReference],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Per-patient 3D dose score and DVH scores of ``model`` on the validation set, then means."""
    from MambaDoseLib.inference import model_slab
    from MambaDoseLib.metrics import dose_score, dvh_score, dvh_score_pooled, openkbp_dvh_metrics

    slab = model_slab(model)
    if slab == 1:
        rows = predict_rows(model, data.features, cfg.val_batch_size, device, cfg.channels_last)
    else:
        rows = predict_rows_in_slabs(model, data, refs, slab, cfg.val_batch_size, device, cfg.channels_last)
    rows = rows.numpy()
    patient_index = data.patient_index.cpu().numpy()
    slice_index = data.slice_index.cpu().numpy()
    view_index = data.view_index.cpu().numpy()
    dose_scores, dvh_scores, pairs = [], [], []
    ptv: dict[str, list[float]] = {"d95": [], "d95_ref": [], "hi": [], "hi_ref": []}
    for number, ref in enumerate(refs):
        sel = patient_index == number
        dose = dose_volume_from_rows(rows[sel], slice_index[sel], ref, view_index[sel], data.views)
        dose_scores.append(dose_score(dose, ref.dose_gy, ref.possible_dose_mask))
        pred_metrics = openkbp_dvh_metrics(dose, ref.structures, ref.voxel_volume_mm3)
        dvh_scores.append(dvh_score(pred_metrics, ref.ref_metrics))
        pairs.append((pred_metrics, ref.ref_metrics))
        for roi, ref_summary in ref.ref_ptv.items():
            s = _ptv_summary(dose, ref.structures[roi], ref.voxel_volume_mm3, ref_summary["rx"])
            ptv["d95"].append(s["D95"])
            ptv["d95_ref"].append(ref_summary["D95"])
            ptv["hi"].append(s["HI"])
            ptv["hi_ref"].append(ref_summary["HI"])
    return {
        "val_dose_score": float(np.mean(dose_scores)),
        "val_dvh_score": _nanmean(dvh_scores),
        "val_dvh_score_pooled": dvh_score_pooled(pairs),
        "val_ptv_d95_gy": _nanmean(ptv["d95"]),
        "val_ptv_d95_ref_gy": _nanmean(ptv["d95_ref"]),
        "val_ptv_hi": _nanmean(ptv["hi"]),
        "val_ptv_hi_ref": _nanmean(ptv["hi_ref"]),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


# --------------------------------------------------------------------------- the run


@dataclass
class TrainState:
    """Progress that a checkpoint carries from one command to the next (plain values)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    wall_s: float = 0.0  # training wall time summed over all commands
    history: list[dict] = field(default_factory=list)
    best_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunData:
    """The slices on this rank's device, and (rank 0) what validation needs."""

    channels: tuple[str, ...]
    train: SliceSet
    val: SliceSet | None
    val_refs: list[ValReference]
    train_source: str
    val_source: str


def _select_ids(ids: list[str], limit: int | None) -> list[str]:
    return ids[:limit] if limit else ids


def load_run_data(
    cfg: TrainConfig,
    rt: Runtime,
    train_patients: Sequence[Patient] | None,
    val_patients: Sequence[Patient] | None,
) -> RunData:
    """Build or reuse the features of the training and validation patients on the device."""
    channels = cfg.channel_names()
    views = cfg.view_names()
    progress = cfg.progress and sys.stderr.isatty()
    train = val = None
    refs: list[ValReference] = []
    if rt.is_main:
        if train_patients is not None:
            train_ids = _select_ids([p.patient_id for p in train_patients], cfg.max_train_patients)
            train_src = cfg.train_cache or "train-patients"
        else:
            train_ids = _select_ids(_cached_ids(cfg.train_cache, "--train-cache"), cfg.max_train_patients)
            train_src = str(Path(cfg.train_cache).resolve())
        if val_patients is not None:
            val_list = [p for p in val_patients][: cfg.max_val_patients or None]
            val_src = cfg.val_cache or "val-patients"
        else:
            val_ids = _select_ids(_cached_ids(cfg.val_cache, "--val-cache"), cfg.max_val_patients)
            val_list = _load_cached(cfg.val_cache, val_ids, cfg.workers)
            val_src = str(Path(cfg.val_cache).resolve())
        t0 = time.monotonic()
        common = dict(
            feature_cache=cfg.feature_cache,
            workers=cfg.workers,
            device=rt.device,
            progress=progress,
            views=views,
            inplane_spacing_mm=cfg.inplane_spacing_mm,
        )
        train = prepare_slice_set(
            train_ids,
            channels,
            cache_dir=None if train_patients is not None else cfg.train_cache,
            patients=train_patients,
            source_name=train_src,
            **common,
        )
        val = prepare_slice_set(
            [p.patient_id for p in val_list],
            channels,
            cache_dir=None if val_patients is not None else cfg.val_cache,
            patients=val_list if val_patients is not None else None,
            source_name=val_src,
            **common,
        )
        if not val_list:
            raise InputError("no validation patients: validation picks the best model")
        refs = [make_val_reference(p, cfg.inplane_spacing_mm) for p in val_list]
        del val_list
        log.info(
            "data: %d training slices of %d patients, %d validation slices of %d patients, "
            "%d channels, views %s, %s, on %s (%.1f s)",
            len(train),
            len(train.patient_ids),
            len(val),
            len(refs),
            len(channels),
            ",".join(views),
            "native grids"
            if cfg.inplane_spacing_mm is None
            else f"in-plane {cfg.inplane_spacing_mm:g} mm (scored on the native grids)",
            rt.device,
            time.monotonic() - t0,
        )
    else:
        train_src = val_src = ""
    if rt.distributed:
        train = _broadcast_slice_set(rt, train)
        train_src, val_src = _broadcast_object(rt, (train_src, val_src))
    return RunData(channels, train, val, refs, train_src, val_src)


def _load_cached(cache_dir: str, ids: list[str], workers: int) -> list[Patient]:
    """Cached patients, decompressed in threads (lzma releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from .cache import load_patient

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pid: load_patient(cache_dir, pid), ids))


def _cached_ids(cache_dir: str, option: str) -> list[str]:
    from .cache import list_cached

    if not cache_dir:
        raise InputError(f"{option} is required")
    if not Path(cache_dir).is_dir():
        raise InputError(f"{option} {cache_dir}: not a folder")
    ids = list(list_cached(cache_dir))
    if not ids:
        raise InputError(f"{option} {cache_dir}: no cached patients (run mambadose preprocess first)")
    return ids


def epoch_plan(
    n_rows: int, n_patients: int, cfg: TrainConfig, world_size: int, slab_patients: int | None = None
) -> tuple[int, int]:
    """(rows drawn per epoch before sharding, optimiser steps per epoch on each rank).

    With ``cfg.slab`` = k > 1 the epoch is ``ceil(n_rows / (n_patients * k))`` slabs of each of
    the ``slab_patients`` patients that have one (default all), as ``balanced_epoch_slabs`` draws
    it; the rows drawn are whole slabs (a multiple of k) and every rank gets whole slabs."""
    k = cfg.slab
    per_patient = max(1, math.ceil(n_rows / (max(1, n_patients) * k)))
    drawn = per_patient * (n_patients if slab_patients is None else slab_patients) * k
    if cfg.slices_per_epoch:
        drawn = min(drawn, cfg.slices_per_epoch) // k * k
    per_rank = drawn // k // world_size * k
    if per_rank < 1:
        what = "slices" if k == 1 else f"slices (slabs of {k})"
        raise InputError(f"an epoch of {drawn} {what} cannot be shared by {world_size} ranks")
    return drawn, max(1, per_rank // cfg.batch_size)


def check_slabs(train: SliceSet, k: int, log_warnings: bool = True) -> int:
    """Number of training patients with at least one slab of ``k`` consecutive kept slices
    (``dataset.slab_starts``); a warning names those without one (they are not trained on), an
    InputError when none has one."""
    starts = slab_starts(train.patient_index, train.slice_index, train.view_index, k)
    counts = torch.bincount(train.patient_index.cpu()[starts], minlength=len(train.patient_ids))
    missing = [pid for pid, c in zip(train.patient_ids, counts.tolist(), strict=True) if c == 0]
    if len(missing) == len(train.patient_ids):
        raise InputError(
            f"--slab {k}: no training patient has {k} consecutive slices with possible-dose voxels"
        )
    if missing and log_warnings:
        log.warning(
            "--slab %d: %d of %d training patients have fewer than %d consecutive slices with "
            "possible-dose voxels and are not trained on: %s",
            k,
            len(missing),
            len(train.patient_ids),
            k,
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    return len(train.patient_ids) - len(missing)


def run_training(
    cfg: TrainConfig,
    train_patients: Sequence[Patient] | None = None,
    val_patients: Sequence[Patient] | None = None,
) -> dict[str, Any]:
    """Train (or continue, with ``cfg.resume``) and write the outputs into ``cfg.out``.

    train_patients / val_patients: in-memory patients instead of the cache folders (tests,
    Slicer). Returns a summary: status ("completed", "early_stopped", "time_limit"), epochs,
    best epoch and validation scores.
    """
    t_start = time.monotonic()
    cfg.check()
    rt = setup_runtime(cfg.device)
    out = Path(cfg.out)
    handler = None
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)
    try:
        return _train(cfg, rt, out, t_start, train_patients, val_patients)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if rt.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _load_checkpoint(cfg: TrainConfig, out: Path) -> dict | None:
    last = out / LAST
    if last.exists() and not cfg.resume:
        raise InputError(f"{last} exists: pass --resume to continue that run, or choose another --out")
    if not cfg.resume:
        return None
    if not last.exists():
        log.info("--resume: no %s yet, starting a new run", last)
        return None
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{last}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
    saved = ckpt.get("config", {}).get("inplane_spacing_mm")
    if saved != cfg.inplane_spacing_mm:
        raise InputError(
            f"{last}: the run was trained with --inplane-spacing {saved} (None: native grids), "
            f"this command asks for {cfg.inplane_spacing_mm}"
        )
    defaults = TrainConfig()
    for name, option in (
        ("loss_beta", "--loss-beta"),
        ("dvh_loss_weight", "--dvh-loss"),
        ("dvh_loss_rois", "--dvh-loss-rois"),
    ):
        before = ckpt.get("config", {}).get(name, getattr(defaults, name))
        if before != getattr(cfg, name):
            log.warning(
                "%s: %s was %s, now %s; the loss changes from this epoch on and the model card "
                "records only the new value",
                last,
                option,
                before,
                getattr(cfg, name),
            )
    return ckpt


def _train(
    cfg: TrainConfig,
    rt: Runtime,
    out: Path,
    t_start: float,
    train_patients: Sequence[Patient] | None,
    val_patients: Sequence[Patient] | None,
) -> dict:
    from MambaDoseLib.model import MambaUNetV2

    ckpt = _load_checkpoint(cfg, out)
    random.seed(cfg.seed + rt.rank)
    np.random.seed((cfg.seed + rt.rank) % 2**32)
    torch.manual_seed(cfg.seed + rt.rank)

    data = load_run_data(cfg, rt, train_patients, val_patients)
    device = rt.device
    if device.type == "cuda":
        from MambaDoseLib.inference import use_fast_cuda_math

        use_fast_cuda_math()
    model_config = build_model_config(cfg, len(data.channels))
    model_config_dict = _model_config_dict(model_config)
    raw_model = MambaUNetV2(model_config)
    if ckpt is not None:
        saved, wanted = _architecture(ckpt["model_config"]), _architecture(model_config_dict)
        if saved != wanted:
            diff = ", ".join(
                f"{k} saved {saved.get(k)!r}, now {wanted.get(k)!r}"
                for k in sorted(set(saved) | set(wanted))
                if saved.get(k) != wanted.get(k)
            )
            raise InputError(
                f"{out / LAST}: the saved model differs from this command's ({diff}); resume with "
                "the options it was started with (e.g. --scan-directions 2 for a run started before "
                "one direction became the default)"
            )
        raw_model.load_state_dict(ckpt["model"])
    if cfg.sync_bn and rt.distributed:
        raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    raw_model.to(device)
    if cfg.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    model: torch.nn.Module = raw_model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        # "default" is the plain torch.compile(model); the other modes add CUDA graphs, for which
        # train_one_epoch marks the start of every step. Validation and export use raw_model / the
        # weight average uncompiled, so they record no graphs (their batch shapes differ).
        model = torch.compile(model, mode=cfg.compile_mode)
        if cfg.cudagraphs and rt.distributed and rt.is_main:
            log.warning(
                "--compile-mode %s under torchrun: CUDA graphs with DistributedDataParallel have not "
                "been run on GPUs by this project (one GPU: 1.95x the default mode on an H200)",
                cfg.compile_mode,
            )
    ema = make_ema(raw_model, cfg.ema_decay)
    if ema is not None and ckpt is not None:
        if "ema" not in ckpt:
            raise InputError(f"{out / LAST}: saved without --ema, so it cannot continue with --ema")
        ema.load_state_dict(ckpt["ema"])
    eval_model = raw_model if ema is None else ema.module
    after_step = None if ema is None else (lambda: ema.update_parameters(raw_model))

    slab_patients = check_slabs(data.train, cfg.slab, rt.is_main) if cfg.slab > 1 else None
    drawn, steps_per_epoch = epoch_plan(
        len(data.train), len(data.train.patient_ids), cfg, rt.world_size, slab_patients
    )
    optimizer = torch.optim.AdamW(
        parameter_groups(raw_model, cfg.weight_decay), lr=cfg.lr, fused=device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg.warmup_epochs, cfg.epochs)
    )
    state = TrainState()
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        log.info(
            "resumed from %s: %d epochs done, best dose score %.4f Gy at epoch %d",
            out / LAST,
            state.epoch,
            state.best_score,
            state.best_epoch,
        )
    n_params = sum(p.numel() for p in raw_model.parameters())
    log.info(
        "model: %s, %.2f M parameters; %d steps of %d slices%s per epoch on %d rank(s); %s",
        cfg.mixer,
        n_params / 1e6,
        steps_per_epoch,
        cfg.batch_size,
        f" (slabs of {cfg.slab})" if cfg.slab > 1 else "",
        rt.world_size,
        torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
    )

    status = "completed"
    past_times = [h["epoch_time_s"] for h in state.history[-5:]]  # earlier calls
    epoch_times: list[float] = []  # this call
    while state.epoch < cfg.epochs:
        if rt.is_main and cfg.time_limit_s is not None:
            estimate = next_epoch_estimate(epoch_times, past_times, cfg.val_every)
            if estimate is not None:
                elapsed = time.monotonic() - t_start
                if elapsed + estimate + END_RESERVE_S > cfg.time_limit_s:
                    status = "time_limit"
        if state.epochs_since_best >= cfg.patience and state.best_epoch > 0:
            status = "early_stopped"
        status = _broadcast_object(rt, status)
        if status != "completed":
            break
        t_epoch = time.monotonic()
        epoch = state.epoch
        loss, train_s = train_one_epoch(
            model, data, cfg, rt, optimizer, scheduler, epoch, drawn, steps_per_epoch, after_step
        )
        if not math.isfinite(loss):
            raise RuntimeError(f"training loss is {loss} at epoch {epoch + 1}; lower --lr or check data")
        state.epoch = epoch + 1
        state.global_step += steps_per_epoch
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": loss,
            "lr": optimizer.param_groups[0]["lr"],
            "slices_per_s": steps_per_epoch * cfg.batch_size * rt.world_size / max(train_s, 1e-9),
            "val_dose_score": math.nan,
            "val_dvh_score": math.nan,
        }
        if rt.is_main:
            if state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs:
                t_val = time.monotonic()
                metrics = validate(eval_model, data.val, data.val_refs, cfg, device)
                row.update(metrics)
                row["val_time_s"] = time.monotonic() - t_val
                if metrics["val_dose_score"] < state.best_score:
                    state.best_score = metrics["val_dose_score"]
                    state.best_epoch = state.epoch
                    state.best_metrics = {k: float(v) for k, v in metrics.items()}
                    atomic_torch_save(
                        {
                            "format": CHECKPOINT_FORMAT,
                            "model": eval_model.state_dict(),
                            "model_config": model_config_dict,
                            "epoch": state.epoch,
                            "metrics": state.best_metrics,
                            "config": cfg.to_dict(),
                        },
                        out / BEST,
                    )
            state.epochs_since_best = state.epoch - state.best_epoch if state.best_epoch else 0
            epoch_s = time.monotonic() - t_epoch
            row["epoch_time_s"] = epoch_s
            state.history.append(row)
            state.wall_s += epoch_s
            _write_checkpoint(out, raw_model, optimizer, scheduler, state, cfg, model_config_dict, ema)
            write_history_csv(state.history, out / "history.csv")
            if state.epoch % 10 == 0:  # and at the end of the call (matplotlib takes ~1 s)
                plot_curves(state.history, out / "curves.png")
            log.info(
                "epoch %d/%d loss %.5f val dose %s DVH %s lr %.2e %.0f slices/s %.1f s",
                state.epoch,
                cfg.epochs,
                loss,
                _gy(row["val_dose_score"]),
                _gy(row["val_dvh_score"]),
                row["lr"],
                row["slices_per_s"],
                epoch_s,
            )
            epoch_times.append(time.monotonic() - t_epoch)
        state = _broadcast_object(rt, state) if rt.distributed else state
        _barrier(rt)

    if rt.is_main:
        if status == "time_limit":
            log.info(
                "stopped at time limit, resume with --resume (%d of %d epochs done, %.0f s in this call)",
                state.epoch,
                cfg.epochs,
                time.monotonic() - t_start,
            )
        elif status == "early_stopped":
            log.info(
                "early stop: no better validation dose score for %d epochs (best %.4f Gy at epoch %d)",
                state.epochs_since_best,
                state.best_score,
                state.best_epoch,
            )
        if state.history:
            plot_curves(state.history, out / "curves.png")
        if (out / BEST).exists():
            export_best_model(out, data, cfg, state, status, rt, model_config)
    return {
        "status": status,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_dose_score": state.best_score,
        "best_metrics": dict(state.best_metrics),
        "steps_per_epoch": steps_per_epoch,
        "history": list(state.history),
    }


def next_epoch_estimate(this_call: list[float], earlier: list[float], val_every: int) -> float | None:
    """Seconds the next epoch may take (None: unknown, run it), with a 10 % margin.

    The first epoch of a call pays one-off costs (Triton / torch.compile compilation, cuDNN
    autotuning), so it is left out once later epochs of the call are known; before any epoch of
    this call, the median of the last epochs of earlier calls is used. The longest recent epoch
    counts (validation runs only every ``val_every`` epochs).
    """
    if len(this_call) >= 2:
        return 1.1 * max(this_call[1:][-(val_every + 1) :])
    if this_call:
        return 1.1 * this_call[0]
    if earlier:
        return 1.1 * float(np.median(earlier))
    return None


def _gy(x: float) -> str:
    return f"{x:.3f} Gy" if _finite(x) else "-"


def train_one_epoch(
    model: torch.nn.Module,
    data: RunData,
    cfg: TrainConfig,
    rt: Runtime,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epoch: int,
    drawn: int,
    steps_per_epoch: int,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One epoch of optimiser steps; returns (mean loss over steps and ranks, train seconds).
    ``after_step()`` runs after each optimiser step (the weight average's update)."""
    from MambaDoseLib.inference import lr_in_plane
    from tqdm import tqdm

    device = rt.device
    train = data.train
    model.train()
    order_gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    # whole slabs of cfg.slab consecutive rows, shared slab by slab (slab 1: the balanced slice epoch)
    rows = balanced_epoch_slabs(
        train.patient_index, train.slice_index, train.view_index, len(train.patient_ids), cfg.slab, order_gen
    )[:drawn]
    rows = shard_indices(rows.view(-1, cfg.slab), rt.rank, rt.world_size).reshape(-1)
    # per row: is the left-right axis in the slice plane (else the mirror only swaps channels)
    in_plane = torch.tensor([lr_in_plane(v) for v in train.views])[train.view_index.cpu()[rows]]
    rows = rows.to(device)
    aug_gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, rt.rank, 1))  # CPU: no sync
    batch = min(cfg.batch_size, rows.numel())
    use_amp = device.type == "cuda"
    # With CUDA graphs (--compile-mode reduce-overhead / max-autotune) the compiled forward and
    # backward are replayed into the same static buffers every step, so nothing they returned is
    # used after its step: `pred` is read only by the eager loss terms of the same step (the loss,
    # its running sum and the progress bar's value are new eager tensors), and the gradients (which
    # `.grad` may take over from the backward graph's buffers) are used by clipping, the optimiser
    # and the weight average within the step, then dropped before the next step's replay
    # (zero_grad(set_to_none=True) at the top of the step). Every step sees the same shapes
    # (epoch_plan floors the steps, so every batch is full; augmentation keeps the slice size), so
    # one graph is recorded and replayed.
    mark_step = torch.compiler.cudagraph_mark_step_begin if cfg.cudagraphs else None
    dvh_idx = None
    if cfg.dvh_loss_weight > 0:
        mask_idx, psdm_idx = roi_channel_indices(data.channels, cfg.dvh_loss_rois)
        if mask_idx or psdm_idx:
            dvh_idx = (
                torch.tensor(mask_idx, dtype=torch.long, device=device),
                torch.tensor(psdm_idx, dtype=torch.long, device=device),
            )
        elif rt.is_main:
            log.warning(
                "--dvh-loss: no mask_ or target psdm_ input channel for --dvh-loss-rois %s, the DVH term is skipped",
                cfg.dvh_loss_rois,
            )
    loss_sum = torch.zeros((), device=device)
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=not (cfg.progress and rt.is_main and sys.stderr.isatty()),
    )
    _sync(device)
    t0 = time.monotonic()
    for step in range(steps_per_epoch):
        idx = rows[step * batch : (step + 1) * batch]
        x = train.features[idx].float()  # (B, C, H, W)
        y = train.dose[idx].float().unsqueeze(1)  # (B, 1, H, W)
        w = train.mask[idx].float().unsqueeze(1)  # (B, 1, H, W)
        lr = in_plane[step * batch : (step + 1) * batch]
        x, y, w = augment_batch(x, y, w, cfg.augment, aug_gen, data.channels, lr_in_plane=lr, group=cfg.slab)
        roi_masks = None
        if dvh_idx is not None:  # structure voxels that can carry dose (the reference is 0 elsewhere)
            roi_masks = roi_masks_from_indices(x, *dvh_idx) & (w > 0.5)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        if mark_step is not None:
            mark_step()  # a new step: the previous step's graph outputs may now be overwritten
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = model(x)
        loss = masked_smooth_l1(pred, y, w, cfg.loss_beta)
        if roi_masks is not None:
            loss = loss + cfg.dvh_loss_weight * sorted_dvh_loss(pred, y, roi_masks, group=cfg.slab)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach()
        bar.update(1)
        if not bar.disable and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    if rt.distributed:
        import torch.distributed as dist

        dist.all_reduce(loss_sum)
        loss_sum /= rt.world_size
    mean_loss = float(loss_sum.item()) / steps_per_epoch
    _sync(device)
    return mean_loss, time.monotonic() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_checkpoint(
    out: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: TrainState,
    cfg: TrainConfig,
    model_config_dict: dict,
    ema: torch.nn.Module | None = None,
) -> None:
    extra = {} if ema is None else {"ema": ema.state_dict()}
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            **extra,
            "model": model.state_dict(),
            "model_config": model_config_dict,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "rng": rng_state(),
            "config": cfg.to_dict(),
        },
        out / LAST,
    )


def export_best_model(
    out: Path, data: RunData, cfg: TrainConfig, state: TrainState, status: str, rt: Runtime, model_config
) -> Path:
    """model_best.safetensors + its card (weights of checkpoint_best.pt)."""
    from MambaDoseLib.model import MambaUNetV2
    from MambaDoseLib.weights import save_model

    best = torch.load(out / BEST, map_location="cpu", weights_only=True)
    model = MambaUNetV2(model_config)
    model.load_state_dict(best["model"])
    device = rt.device
    card = {
        "config": _model_config_dict(model_config),
        "channels": list(data.channels),
        "views": list(data.train.views),
        "normalisation": _normalisation_card(),
        **({} if cfg.inplane_spacing_mm is None else {"inplane_spacing_mm": float(cfg.inplane_spacing_mm)}),
        "training": {
            "train_cache": data.train_source,
            "val_cache": data.val_source,
            "train_patients": len(data.train.patient_ids),
            "val_patients": len(data.val_refs),
            "train_slices": len(data.train),
            "val_slices": len(data.val) if data.val is not None else 0,
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "status": status,
            "wall_time_s": round(state.wall_s, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "world_size": rt.world_size,
            "validation": {k: (v if _finite(v) else None) for k, v in state.best_metrics.items()},
            "config": cfg.to_dict(),
        },
    }
    path = out / MODEL_BEST
    save_model(path, model, card)
    return path


def _normalisation_card() -> dict:
    """How inputs and output are scaled (constants of ``MambaDoseLib.features``)."""
    from MambaDoseLib import features

    return {
        "ct_range": list(features.CT_RANGE),
        "dose_range_gy": list(features.DOSE_RANGE_GY),
        "psdm_clip_mm": features.PSDM_CLIP_MM,
        "scale": "linear to [-1, 1] after clipping",
    }
