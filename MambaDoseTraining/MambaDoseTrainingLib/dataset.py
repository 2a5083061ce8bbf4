"""Axial training slices held on the device, built once per run (and cached on disk).

Data path (chosen so that the GPU never waits for data):

1. ``build_slice_files``: for every patient, in parallel worker processes, load the patient from
   the compact cache, compute ``features.build_features`` (C, I, J, K) and keep the axial slices
   that contain at least one possible-dose voxel. Each patient's kept slices are written into a
   feature cache folder, atomically: ``<id>.features.npy`` (float16 features) and ``<id>.npz``
   (float16 normalised dose, bool mask, slice indices; written last, it marks the patient done). A resumed command finds the files and skips the work.
   With ``inplane_spacing_mm`` every patient is first resampled onto 128 x 128 in-plane voxels of
   that size (``MambaDoseLib.spacing``); the spacing is part of the folder key, so native and
   resampled slice files never mix.
2. ``load_slice_set``: stack all patients' files into one :class:`SliceSet` of device tensors:
   ``features`` float16 (N, C, H, W), ``dose`` float16 (N, H, W) on the [-1, 1] scale,
   ``mask`` bool (N, H, W); plus ``patient_index`` / ``slice_index`` (N,) to map a row back to
   its patient. About 10 GiB for the 15.6k slices of OpenKBP at 20 channels.
3. ``balanced_epoch_indices``: each epoch draws the same number of slices from every patient
   (``ceil(N / P)``: a fresh random order of the patient's slices, repeated when the patient has
   fewer), so a patient with many slices weighs no more than one with few; the epoch is then
   shuffled. One ``torch.Generator`` seeded by (seed, epoch) makes the order reproducible and
   identical on every rank of a multi-GPU run, which then takes its ``rank::world`` share.
   Slab training (``mambadose train --slab K``) draws slabs of K consecutive kept slices of one
   patient instead (``balanced_epoch_slabs``: each patient's runs of consecutive kept slices tiled
   from a random offset, so every slice is about equally likely; runs found by ``slab_starts``); the
   ranks share the epoch slab by slab.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from MambaDoseLib.errors import InputError
from MambaDoseLib.patient import Patient

log = logging.getLogger(__name__)

#: Bump when the per-patient slice file layout or the feature definition changes.
SLICE_FILE_VERSION = 2

#: Channel presets of the CLI. "2.5d" adds the neighbouring CT slices around the CT channel.
CHANNEL_PRESETS = ("2d", "2.5d")


def channels_for_preset(preset: str) -> tuple[str, ...]:
    """Input channel names for a preset: ``"2d"`` = ``features.CHANNELS``; ``"2.5d"`` adds
    ``ct_prev`` before and ``ct_next`` after the ``ct`` channel."""
    from MambaDoseLib.features import CHANNELS

    if preset == "2d":
        return tuple(CHANNELS)
    if preset == "2.5d":
        out: list[str] = []
        for name in CHANNELS:
            out.extend(("ct_prev", "ct", "ct_next") if name == "ct" else (name,))
        return tuple(out)
    raise InputError(f"unknown channel preset {preset!r} (choose from {', '.join(CHANNEL_PRESETS)})")


def resolve_channels(text: str) -> tuple[str, ...]:
    """Input channel names from ``mambadose train --channels``: a preset (``"2d"``, ``"2.5d"``) or a
    comma list of channel names in which a preset stands for its channels, e.g.
    ``"2d,prior_dose,prior_dose_prev,prior_dose_next"`` (a cascade's second stage). InputError
    naming the list for an unknown name, a name given twice or an empty list."""
    from MambaDoseLib.features import check_channels

    names: list[str] = []
    for item in (c.strip() for c in text.split(",")):
        if item:
            names.extend(channels_for_preset(item) if item in CHANNEL_PRESETS else (item,))
    try:
        if not names:
            raise ValueError("no channel names")
        check_channels(names)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"channel {twice[0]!r} given twice")
    except ValueError as exc:
        raise InputError(f"--channels {text!r}: {exc}") from exc
    return tuple(names)


@dataclass
class PatientSlices:
    """The kept slices of one patient (host arrays).

    features: float16 (n, C, H, W); dose: float16 (n, H, W) normalised; mask: bool (n, H, W);
    slice_index: int64 (n,) index of each slice along the axis its view cuts;
    view_index: int64 (n,) position of each slice's view in the ``views`` it was built for.
    Slices are laid out by ``inference.to_slices`` (axial: (I, J)).
    """

    patient_id: str
    features: np.ndarray
    dose: np.ndarray
    mask: np.ndarray
    slice_index: np.ndarray
    view_index: np.ndarray


def patient_slices(
    patient: Patient, channels: Sequence[str], views: Sequence[str] = ("axial",)
) -> PatientSlices:
    """Features of the slices of ``patient`` that contain possible-dose voxels, for each of
    ``views`` in turn (``inference.VIEWS``; each view's slices in the order of its axis).

    When the views' slices differ in size (a volume that is not a cube), every slice is padded at
    its high row / column end to the largest size: features repeat their edge (as
    ``inference.predict_volume`` pads), dose and mask are 0 there, so the padding carries no loss.
    """
    from MambaDoseLib.features import build_features, normalise_dose
    from MambaDoseLib.inference import check_views, slices_with_voxels, to_slices

    if patient.dose_gy is None:
        raise InputError(f"patient {patient.patient_id} has no reference dose: it cannot be trained on")
    views = check_views(views)
    volume = build_features(patient, tuple(channels))  # (C, I, J, K) float32
    dose = np.asarray(normalise_dose(patient.dose_gy), np.float32)
    pdm = np.asarray(patient.possible_dose_mask, bool)
    sizes = [to_slices(pdm, v).shape[1:] for v in views]
    size = (max(h for h, _ in sizes), max(w for _, w in sizes))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("features", "dose", "mask", "slice", "view")}
    for number, (view, (h, w)) in enumerate(zip(views, sizes, strict=True)):
        keep = slices_with_voxels(pdm, view)
        pad = ((0, 0), (0, size[0] - h), (0, size[1] - w))
        feats = to_slices(volume, view)[keep].astype(np.float16)
        parts["features"].append(np.pad(feats, pad[:1] + ((0, 0),) + pad[1:], mode="edge"))
        parts["dose"].append(np.pad(to_slices(dose, view)[keep].astype(np.float16), pad))
        parts["mask"].append(np.pad(to_slices(pdm, view)[keep], pad))
        parts["slice"].append(keep.astype(np.int64))
        parts["view"].append(np.full(keep.size, number, np.int64))
    return PatientSlices(
        patient_id=patient.patient_id,
        features=np.ascontiguousarray(np.concatenate(parts["features"])),  # (n, C, H, W)
        dose=np.ascontiguousarray(np.concatenate(parts["dose"])),
        mask=np.ascontiguousarray(np.concatenate(parts["mask"])),
        slice_index=np.concatenate(parts["slice"]),
        view_index=np.concatenate(parts["view"]),
    )


def _write_atomic(path: Path, save, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        save(f, data)
    os.replace(tmp, path)


def _slice_file(folder: Path, patient_id: str) -> Path:
    """The small per-patient file (dose, mask, slice indices); written last, so it marks 'done'."""
    return folder / f"{patient_id}.npz"


def _feature_file(folder: Path, patient_id: str) -> Path:
    """The big per-patient file: float16 (n, C, I, J) features (.npy: its shape reads for free)."""
    return folder / f"{patient_id}.features.npy"


def write_patient_slices(folder: Path, s: PatientSlices) -> None:
    """Write one patient's slices: features first, then the .npz that marks the pair complete."""
    _write_atomic(_feature_file(folder, s.patient_id), np.save, s.features)
    _write_atomic(
        _slice_file(folder, s.patient_id),
        lambda f, d: np.savez(f, **d),
        {"dose": s.dose, "mask": s.mask, "slice_index": s.slice_index, "view_index": s.view_index},
    )


def _build_and_write(
    patient: Patient | None,
    cache_dir: str | None,
    patient_id: str,
    channels: tuple[str, ...],
    folder: str,
    views: tuple[str, ...] = ("axial",),
    inplane_spacing_mm: float | None = None,
) -> tuple[str, int]:
    """Worker: (load from the patient cache,) resample in-plane when ``inplane_spacing_mm`` is
    set, build the slices, write them. Returns (the id, possible-dose voxels left outside the
    resampled field)."""
    if patient is None:
        from MambaDoseTrainingLib.cache import load_patient

        patient = load_patient(cache_dir, patient_id)
    outside = 0
    if inplane_spacing_mm is not None:
        from MambaDoseLib.spacing import resample_patient_inplane

        patient, inplane = resample_patient_inplane(patient, inplane_spacing_mm)
        outside = inplane.pdm_voxels_outside
    write_patient_slices(Path(folder), patient_slices(patient, channels, views))
    return patient_id, outside


def feature_folder(
    root: str | os.PathLike,
    source: str,
    channels: Sequence[str],
    views: Sequence[str] = ("axial",),
    inplane_spacing_mm: float | None = None,
) -> Path:
    """The folder under ``root`` for one data source (a cache dir, or a name), channel list,
    views and in-plane spacing (None = native grids; left out of the key, so native folders keep
    their names)."""
    fields = {
        "v": SLICE_FILE_VERSION,
        "source": str(source),
        "channels": list(channels),
        "views": list(views),
    }
    if inplane_spacing_mm is not None:
        from MambaDoseLib.geometry import MODEL_INPLANE_SIZE

        fields["inplane"] = [float(inplane_spacing_mm), MODEL_INPLANE_SIZE]
    key = json.dumps(fields)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    name = Path(str(source)).name or "data"
    return Path(root) / f"{name}-{digest}"


def build_slice_files(
    folder: str | os.PathLike,
    patient_ids: Sequence[str],
    channels: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    patients: Sequence[Patient] | None = None,
    workers: int = 0,
    progress: bool = False,
    views: Sequence[str] = ("axial",),
    inplane_spacing_mm: float | None = None,
) -> Path:
    """Write one slice file per patient into ``folder`` (skipping those already there).

    Give either ``cache_dir`` (workers load the patients themselves: nothing big is pickled) or
    ``patients`` (in memory; sent to the workers). ``workers`` <= 1 builds in this process.
    ``inplane_spacing_mm``: resample each patient in-plane first (``spacing.resample_patient_inplane``);
    the folder must be one keyed by it (``feature_folder``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_id = {p.patient_id: p for p in patients} if patients is not None else {}
    todo = [pid for pid in patient_ids if not _slice_file(folder, pid).exists()]
    if len(todo) < len(patient_ids):
        log.info(
            "feature cache %s: %d of %d patients already built",
            folder,
            len(patient_ids) - len(todo),
            len(patient_ids),
        )
    if not todo:
        return folder
    channels = tuple(channels)
    src = None if cache_dir is None else str(cache_dir)
    jobs = [
        (by_id.get(pid), src, pid, channels, str(folder), tuple(views), inplane_spacing_mm) for pid in todo
    ]
    bar = _progress(len(jobs), progress, "features")
    outside: dict[str, int] = {}
    if workers <= 1:
        for job in jobs:
            pid, n = _build_and_write(*job)
            outside[pid] = n
            bar.update(1)
    else:
        # spawn: safe after CUDA or a thread pool is initialised in this process
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for pid, n in pool.map(_build_and_write_star, jobs):
                outside[pid] = n
                bar.update(1)
    bar.close()
    cropped = {pid: n for pid, n in outside.items() if n}
    if cropped:
        log.warning(
            "in-plane resampling to %g mm: %d of %d patients have possible-dose voxels outside the "
            "field (%d voxels in all; most: %s)",
            inplane_spacing_mm,
            len(cropped),
            len(outside),
            sum(cropped.values()),
            ", ".join(f"{pid} {n}" for pid, n in sorted(cropped.items(), key=lambda kv: -kv[1])[:5]),
        )
    return folder


def _build_and_write_star(job: tuple) -> tuple[str, int]:
    return _build_and_write(*job)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


@dataclass
class SliceSet:
    """All kept slices of a group of patients, as tensors on one device.

    features: float16 (N, C, H, W); dose: float16 (N, H, W) on the [-1, 1] scale;
    mask: bool (N, H, W) possible-dose mask; patient_index: int64 (N,) row -> patient number;
    slice_index: int64 (N,) row -> index along the axis its view cuts; view_index: int64 (N,)
    row -> position in ``views``.
    """

    patient_ids: list[str]
    channels: tuple[str, ...]
    features: torch.Tensor
    dose: torch.Tensor
    mask: torch.Tensor
    patient_index: torch.Tensor
    slice_index: torch.Tensor
    view_index: torch.Tensor
    views: tuple[str, ...] = ("axial",)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def rows_of(self, patient_number: int) -> torch.Tensor:
        """Row numbers (on the CPU) of one patient's slices, view by view, each in slice order."""
        return torch.nonzero(self.patient_index.cpu() == patient_number).squeeze(1)


def load_slice_set(
    folder: str | os.PathLike,
    patient_ids: Sequence[str],
    channels: Sequence[str],
    device: torch.device | str = "cpu",
    views: Sequence[str] = ("axial",),
) -> SliceSet:
    """Stack the slice files of ``patient_ids`` from ``folder`` into device tensors."""
    folder = Path(folder)
    parts = []
    for pid in patient_ids:
        path = _slice_file(folder, pid)
        if not path.exists():
            raise InputError(f"{path}: slice file missing (build_slice_files first)")
        features = np.load(_feature_file(folder, pid), mmap_mode="r")  # reads the header only
        parts.append((features.shape, pid))
    shapes = {shape[1:] for shape, _ in parts}
    if len(shapes) != 1:
        raise InputError(f"{folder}: patients have different slice shapes {sorted(shapes)}")
    n_total = sum(shape[0] for shape, _ in parts)
    c, h, w = shapes.pop()
    if c != len(channels):
        raise InputError(f"{folder}: {c} feature channels, expected {len(channels)}")
    device = torch.device(device)
    features = torch.empty((n_total, c, h, w), dtype=torch.float16, device=device)
    dose = torch.empty((n_total, h, w), dtype=torch.float16, device=device)
    mask = torch.empty((n_total, h, w), dtype=torch.bool, device=device)
    patient_index = torch.empty(n_total, dtype=torch.int64)
    slice_index = torch.empty(n_total, dtype=torch.int64)
    view_index = torch.empty(n_total, dtype=torch.int64)
    row = 0
    for number, (shape, pid) in enumerate(parts):
        n = shape[0]
        features[row : row + n] = torch.from_numpy(np.load(_feature_file(folder, pid))).to(device)
        with np.load(_slice_file(folder, pid)) as z:
            dose[row : row + n] = torch.from_numpy(z["dose"]).to(device)
            mask[row : row + n] = torch.from_numpy(z["mask"]).to(device)
            slice_index[row : row + n] = torch.from_numpy(z["slice_index"])
            view_index[row : row + n] = torch.from_numpy(z["view_index"])
        patient_index[row : row + n] = number
        row += n
    return SliceSet(
        list(patient_ids),
        tuple(channels),
        features,
        dose,
        mask,
        patient_index.to(device),
        slice_index.to(device),
        view_index.to(device),
        tuple(views),
    )


def prepare_slice_set(
    patient_ids: Sequence[str],
    channels: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    patients: Sequence[Patient] | None = None,
    feature_cache: str | os.PathLike | None = None,
    source_name: str | None = None,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    views: Sequence[str] = ("axial",),
    inplane_spacing_mm: float | None = None,
) -> SliceSet:
    """Build (or reuse) the slice files and load them onto ``device``.

    ``feature_cache``: root folder kept between commands; None = a temporary folder removed after
    loading. ``source_name`` names the data in the cache key (default: ``cache_dir``).
    ``inplane_spacing_mm``: slices of the patients resampled to that in-plane voxel size (None:
    each patient's own grid).
    """
    source = source_name or (str(Path(cache_dir).resolve()) if cache_dir is not None else "patients")
    with contextlib.ExitStack() as stack:
        if feature_cache is None:  # built for this call only
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mambadose-features-"))
        else:  # reused by later commands on this machine
            folder = feature_folder(feature_cache, source, channels, views, inplane_spacing_mm)
        build_slice_files(
            folder,
            patient_ids,
            channels,
            cache_dir=cache_dir,
            patients=patients,
            workers=workers,
            progress=progress,
            views=views,
            inplane_spacing_mm=inplane_spacing_mm,
        )
        return load_slice_set(folder, patient_ids, channels, device, views)


def balanced_epoch_indices(
    patient_index: torch.Tensor, n_patients: int, generator: torch.Generator, per_patient: int | None = None
) -> torch.Tensor:
    """Row numbers for one epoch: ``per_patient`` slices of every patient, shuffled (CPU int64).

    per_patient: default ``ceil(N / P)`` so an epoch has about N samples. A patient's slices are
    drawn in a fresh random order, cycled when it has fewer than ``per_patient``.
    """
    patient_index = patient_index.cpu()
    n = patient_index.numel()
    if per_patient is None:
        per_patient = max(1, math.ceil(n / max(1, n_patients)))
    order = torch.argsort(patient_index, stable=True)
    counts = torch.bincount(patient_index, minlength=n_patients)
    starts = torch.cumsum(counts, 0) - counts
    chosen = []
    for p in range(n_patients):
        count = int(counts[p])
        if count == 0:
            continue
        repeats = math.ceil(per_patient / count)
        draws = torch.cat([torch.randperm(count, generator=generator) for _ in range(repeats)])
        chosen.append(order[int(starts[p]) + draws[:per_patient]])
    rows = torch.cat(chosen)
    return rows[torch.randperm(rows.numel(), generator=generator)]


def slab_starts(
    patient_index: torch.Tensor, slice_index: torch.Tensor, view_index: torch.Tensor, k: int
) -> torch.Tensor:
    """Rows ``r`` that start a slab of ``k`` consecutive slices: rows ``r .. r+k-1`` belong to one
    patient and one view and their ``slice_index`` runs ``s, s+1, ..., s+k-1`` (CPU int64,
    ascending). Rows are a :class:`SliceSet`'s (per patient, per view, in slice order); a gap
    between kept slices or a patient or view boundary ends a run. ``k = 1``: every row."""
    if k < 1:
        raise ValueError(f"slab size must be >= 1, got {k}")
    patient, slice_, view = (t.cpu() for t in (patient_index, slice_index, view_index))
    n = patient.numel()
    if k == 1:
        return torch.arange(n)
    if n < k:
        return torch.zeros(0, dtype=torch.int64)
    # step r -> r+1 stays within one run of consecutive slices
    step = (patient[1:] == patient[:-1]) & (view[1:] == view[:-1]) & (slice_[1:] - slice_[:-1] == 1)
    whole = step.unfold(0, k - 1, 1).all(dim=1)  # (n - k + 1,): steps r .. r+k-2 all inside
    return torch.nonzero(whole).squeeze(1)


def _tiling_pass(runs: list[tuple[int, int]], k: int, generator: torch.Generator) -> torch.Tensor:
    """One pass of slab starts over a patient's runs of consecutive kept slices: each run (rows
    ``a .. b``, at least ``k`` of them) is tiled by slabs of ``k`` from a random offset, the partial
    slabs at its two ends moved inside it, so every slice of the run is in one or (within ``k`` of
    an end) two slabs of the pass; the pass's slabs in random order."""
    starts = []
    for a, b in runs:
        offset = int(torch.randint(0, k, (1,), generator=generator))
        tiles = torch.arange(a - offset, b + 1, k).clamp(a, b - k + 1)
        starts.append(torch.unique(tiles))
    out = torch.cat(starts)
    return out[torch.randperm(out.numel(), generator=generator)]


def balanced_epoch_slabs(
    patient_index: torch.Tensor,
    slice_index: torch.Tensor,
    view_index: torch.Tensor,
    n_patients: int,
    k: int,
    generator: torch.Generator,
    per_patient: int | None = None,
) -> torch.Tensor:
    """Row numbers for one epoch in whole slabs of ``k`` consecutive slices (CPU int64): rows
    ``k*i .. k*i+k-1`` are slab ``i``, its slices in order.

    Like :func:`balanced_epoch_indices` with slabs for slices: ``per_patient`` slabs of every
    patient that has one (default ``ceil(N / (P * k))``, so an epoch has about N rows), then the
    slabs of all patients shuffled. A patient's slabs come from passes that tile each of its runs
    of consecutive kept slices (:func:`slab_starts`) from a random offset (:func:`_tiling_pass`):
    every slice is about equally likely to be trained on (slices within ``k`` of a run's ends up to
    twice as often), where starts drawn uniformly would leave the ends of every run in fewer slabs
    (the first slice in one slab out of ``L - k + 1``, an inner one in ``k``). Passes repeat
    while the patient needs more slabs. ``k = 1`` is :func:`balanced_epoch_indices` itself (same
    draws from ``generator``).
    """
    if k == 1:
        return balanced_epoch_indices(patient_index, n_patients, generator, per_patient)
    patient_index = patient_index.cpu()
    n = patient_index.numel()
    if per_patient is None:
        per_patient = max(1, math.ceil(n / (max(1, n_patients) * k)))
    starts = slab_starts(patient_index, slice_index, view_index, k)
    # runs of valid starts: consecutive start rows belong to one run of consecutive slices
    breaks = torch.nonzero(starts[1:] - starts[:-1] != 1).squeeze(1) + 1
    first = torch.cat([torch.zeros(1, dtype=torch.int64), breaks]) if starts.numel() else breaks
    last = torch.cat([breaks - 1, torch.tensor([starts.numel() - 1])]) if starts.numel() else breaks
    runs: list[list[tuple[int, int]]] = [[] for _ in range(n_patients)]
    for i, j in zip(first.tolist(), last.tolist(), strict=True):
        a, b = int(starts[i]), int(starts[j]) + k - 1  # rows a .. b: the run's slices
        runs[int(patient_index[a])].append((a, b))
    chosen = []
    for p in range(n_patients):
        if not runs[p]:
            continue
        drawn, count = [], 0
        while count < per_patient:
            tiles = _tiling_pass(runs[p], k, generator)
            drawn.append(tiles)
            count += tiles.numel()
        chosen.append(torch.cat(drawn)[:per_patient])
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    slabs = torch.cat(chosen)
    slabs = slabs[torch.randperm(slabs.numel(), generator=generator)]
    return (slabs[:, None] + torch.arange(k)).reshape(-1)


def shard_indices(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch (``rank::world``), trimmed so every rank gets as many.
    ``rows`` (N,), or (N, k) for slabs: the share is taken along the first dimension."""
    usable = (rows.shape[0] // world_size) * world_size
    return rows[:usable][rank::world_size]
