"""The compact patient cache: one small lzma file per OpenKBP patient plus ``index.json``.

``build_cache`` reads every patient of a split (``openkbp.read_patient``), checks it and writes
``<cache_dir>/<patient_id>.npz.xz`` (atomically) and ``<cache_dir>/index.json``. Loading needs
numpy and the standard library only (no SimpleITK, pandas or torch), so the cache can travel to
a training machine in one piece (169 + 33 OpenKBP patients: about 50 MB).

What a patient file holds (an uncompressed ``.npz`` inside one xz stream, LZMA2 preset 9):

=================  ====================================================================
``ct_delta``       uint8 (I, J, K): ``q = round(clip(ct, 0, 2550) / 10)`` (offset CT in steps
                   of 10), stored as the difference along k modulo 256 (``q[..., 0]`` first)
``dose_planes``    uint8 (P, I, J, K): dose in centi-Gy ``d = round(dose_gy * 100)`` as the
                   mixed difference along j and k, zig-zag coded, split into P byte planes
                   (absent when the patient has no dose)
``prior_planes``   uint8, the same coding of ``Patient.prior_dose_gy`` (a first-stage model's
                   dose, for a cascade's second stage; absent when the patient has none:
                   ``write_patients``)
``masks``          uint8: ``np.packbits`` of the bool stack (possible_dose_mask, ROI masks) of
                   shape (1 + R, I, J, K) along its flattened C order
``roi_names``      str (R,): the contoured ROIs, in ``rois.ROI_NAMES`` order
``spacing_mm``     float64 (3,); ``shape`` int64 (3,)
=================  ====================================================================

The differences only make the xz stream smaller (about 10 %); decoding is a cumulative sum.
Loading gives back the masks and the spacing exactly, the CT within 5 (its step is 10; values
above 2550 come back as 2550) and the dose within 0.005 Gy.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from MambaDoseLib.errors import InputError
from MambaDoseLib.patient import Patient
from MambaDoseLib.rois import ROI_NAMES

log = logging.getLogger(__name__)

FORMAT_NAME = "mambadose-openkbp-cache"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PATIENT_SUFFIX = ".npz.xz"

#: CT quantisation: offset CT (HU + 1024) clipped to [0, CT_MAX] and rounded to steps of CT_STEP.
CT_STEP = 10.0
CT_MAX = 2550.0
#: Dose quantisation: Gy rounded to DOSE_STEP_GY (stored as integer centi-Gy).
DOSE_STEP_GY = 0.01
#: LZMA2 preset 9 with a 16 MiB dictionary (a patient's raw container is about 9-11 MB, so this
#: compresses exactly like preset 9's 64 MiB while needing a quarter of the memory per worker).
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 24}]

QUANTISATION: dict[str, dict] = {
    "ct": {
        "unit": "offset CT (HU + 1024)",
        "step": CT_STEP,
        "clip": [0.0, CT_MAX],
        "max_abs_error": CT_STEP / 2,
    },
    "dose_gy": {"unit": "Gy", "step": DOSE_STEP_GY, "max_abs_error": DOSE_STEP_GY / 2},
    "masks": "exact (packed bits)",
    "spacing_mm": "exact (float64)",
}


# Encoding -----------------------------------------------------------------------------------------


def _zigzag(r: np.ndarray) -> np.ndarray:
    """int32 -> int32 >= 0: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return (r << 1) ^ (r >> 31)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ -(z & 1)


def quantise_ct(ct: np.ndarray) -> np.ndarray:
    """uint8 (I, J, K): ``round(clip(ct, 0, CT_MAX) / CT_STEP)``."""
    return np.rint(np.clip(ct, 0.0, CT_MAX) / CT_STEP).astype(np.uint8)


def quantise_dose(dose_gy: np.ndarray) -> np.ndarray:
    """uint16 (I, J, K) centi-Gy: ``round(dose_gy / DOSE_STEP_GY)``; raises ValueError above 655 Gy
    and below 0 Gy (after rounding)."""
    centi = np.rint(np.asarray(dose_gy, dtype=np.float64) / DOSE_STEP_GY)
    if centi.size and centi.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"dose {centi.max() * DOSE_STEP_GY:.1f} Gy exceeds the cache's range (655 Gy)")
    if centi.size and centi.min() < 0:
        raise ValueError(f"dose {centi.min() * DOSE_STEP_GY:.2f} Gy is below the cache's range (0 Gy)")
    return centi.astype(np.uint16)


def _encode_ct(q: np.ndarray) -> np.ndarray:
    return np.diff(q, axis=2, prepend=np.uint8(0))  # uint8 arithmetic wraps modulo 256


def _decode_ct(delta: np.ndarray) -> np.ndarray:
    return np.cumsum(delta, axis=2, dtype=np.uint8)


def _encode_dose(centi: np.ndarray) -> np.ndarray:
    """uint8 (P, I, J, K) byte planes (least significant first) of the zig-zag coded mixed
    difference along j and k of uint16 centi-Gy (|difference| < 2^17, so P <= 3)."""
    r = centi.astype(np.int32)
    z = _zigzag(np.diff(np.diff(r, axis=1, prepend=0), axis=2, prepend=0))
    n_planes = max(1, (int(z.max()).bit_length() + 7) // 8) if z.size else 1
    return np.stack([((z >> (8 * p)) & 255).astype(np.uint8) for p in range(n_planes)])


def _decode_dose(planes: np.ndarray) -> np.ndarray:
    """int32 (I, J, K) centi-Gy from ``_encode_dose``'s planes."""
    z = planes[0].astype(np.int32)
    for p in range(1, planes.shape[0]):
        z |= planes[p].astype(np.int32) << (8 * p)
    return np.cumsum(np.cumsum(_unzigzag(z), axis=2, dtype=np.int32), axis=1, dtype=np.int32)


def encode_patient(patient: Patient, preset: int = 9) -> bytes:
    """The xz-compressed container of one patient (module doc); ``preset`` 0-9, the LZMA2 preset
    (9 the smallest files; 1 about ten times faster to write, 10-20 % larger)."""
    rois = [name for name in ROI_NAMES if name in patient.structures]
    stack = np.stack([patient.possible_dose_mask] + [patient.structures[name] for name in rois]).astype(bool)
    arrays = {
        "ct_delta": _encode_ct(quantise_ct(patient.ct)),
        "masks": np.packbits(stack.ravel()),
        "roi_names": np.array(rois, dtype=str),
        "spacing_mm": np.asarray(patient.spacing_mm, dtype=np.float64),
        "shape": np.asarray(patient.shape, dtype=np.int64),
    }
    if patient.dose_gy is not None:
        arrays["dose_planes"] = _encode_dose(quantise_dose(patient.dose_gy))
    if patient.prior_dose_gy is not None:
        arrays["prior_planes"] = _encode_dose(quantise_dose(patient.prior_dose_gy))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    filters = [dict(_LZMA_FILTERS[0], preset=preset)]
    return lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, filters=filters)


def decode_patient(data: bytes, patient_id: str) -> Patient:
    """A ``Patient`` from ``encode_patient``'s bytes: CT float32 (multiples of 10), dose float32 Gy
    (multiples of 0.01, or None), exact bool masks and float64 spacing."""
    with np.load(io.BytesIO(lzma.decompress(data)), allow_pickle=False) as f:
        shape = tuple(int(n) for n in f["shape"])
        rois = [str(name) for name in f["roi_names"]]
        count = (1 + len(rois)) * int(np.prod(shape))
        stack = np.unpackbits(f["masks"], count=count).astype(bool).reshape(1 + len(rois), *shape)
        ct = _decode_ct(f["ct_delta"]).astype(np.float32) * np.float32(CT_STEP)
        dose, prior = (
            _decode_dose(f[key]).astype(np.float32) * np.float32(DOSE_STEP_GY) if key in f.files else None
            for key in ("dose_planes", "prior_planes")
        )
        spacing = tuple(float(s) for s in f["spacing_mm"])
    return Patient(
        patient_id=patient_id,
        ct=ct,
        spacing_mm=spacing,  # type: ignore[arg-type]
        possible_dose_mask=stack[0],
        structures={name: stack[1 + n] for n, name in enumerate(rois)},
        dose_gy=dose,
        prior_dose_gy=prior,
    )


# Checks -------------------------------------------------------------------------------------------


def validate_patient(patient: Patient, source: str | os.PathLike, require_dose: bool = False) -> list[str]:
    """Check a patient before caching; raises InputError naming ``source`` when unusable.

    Returns warnings (strings) for oddities that do not stop the cache (dose outside the
    possible-dose mask, an empty possible-dose mask). CT above 2550 (dense bone, metal) is normal
    and only counted in the index (``ct_clipped_voxels``).
    """
    shape = patient.shape
    if len(shape) != 3:
        raise InputError(f"{source}: CT is not a 3D volume (shape {shape})")
    arrays = {"possible_dose_mask": patient.possible_dose_mask, **patient.structures}
    if patient.dose_gy is not None:
        arrays["dose"] = patient.dose_gy
    for name, array in arrays.items():
        if array.shape != shape:
            raise InputError(f"{source}: {name} has shape {array.shape}, CT has {shape}")
    if not all(np.isfinite(s) and s > 0 for s in patient.spacing_mm) or len(patient.spacing_mm) != 3:
        raise InputError(f"{source}: voxel size {patient.spacing_mm} mm is not three positive numbers")
    if not np.all(np.isfinite(patient.ct)):
        raise InputError(f"{source}: CT has NaN or infinite values")
    if require_dose and patient.dose_gy is None:
        raise InputError(f"{source}: no dose (dose.csv) but the cache needs reference doses")
    warnings = []
    if patient.dose_gy is not None:
        dose = patient.dose_gy
        if not np.all(np.isfinite(dose)) or dose.min() < 0:
            raise InputError(f"{source}: dose has negative, NaN or infinite values")
        outside = int(np.count_nonzero((dose > 0) & ~patient.possible_dose_mask))
        if outside:
            warnings.append(f"{source}: {outside} voxels with dose outside the possible-dose mask")
    if not patient.possible_dose_mask.any():
        warnings.append(f"{source}: empty possible-dose mask")
    return warnings


# Files --------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def patient_file(cache_dir: str | os.PathLike, patient_id: str) -> Path:
    """Path of one patient's file in the cache."""
    return Path(cache_dir) / f"{patient_id}{PATIENT_SUFFIX}"


def _cache_one(folder: str, cache_dir: str, require_dose: bool) -> dict:
    """Worker: read, check, encode and write one patient; returns its index entry."""
    from MambaDoseLib.openkbp import read_patient

    patient = read_patient(folder)
    warnings = validate_patient(patient, folder, require_dose=require_dose)
    return _write_patient(patient, cache_dir, warnings)


def _write_patient(
    patient: Patient, cache_dir: str | os.PathLike, warnings: list[str], preset: int = 9
) -> dict:
    """Encode and write one patient's file (atomically); returns its index entry."""
    data = encode_patient(patient, preset)
    _write_atomic(patient_file(cache_dir, patient.patient_id), data)
    entry = {
        "id": patient.patient_id,
        "file": patient_file(cache_dir, patient.patient_id).name,
        "rois": [name for name in ROI_NAMES if name in patient.structures],
        "has_dose": patient.dose_gy is not None,
        "spacing_mm": [float(s) for s in patient.spacing_mm],
        "shape": list(patient.shape),
        "bytes": len(data),
        "ct_clipped_voxels": int(np.count_nonzero(patient.ct > CT_MAX)),
        "warnings": warnings,
    }
    if patient.prior_dose_gy is not None:
        entry["has_prior_dose"] = True
    return entry


def _cache_one_star(job: tuple[str, str, bool]) -> dict:
    return _cache_one(*job)


def build_cache(
    split_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    progress: bool = True,
    workers: int = 1,
    require_dose: bool = False,
) -> dict:
    """Cache every ``pt_<N>`` folder of an OpenKBP split into ``cache_dir``.

    workers: processes (1 = in this process). require_dose: every patient must have dose.csv.
    Raises InputError (folder named) on the first unusable patient; files already written stay,
    but ``index.json`` is only written when every patient is cached. Returns a summary dict:
    ``cache_dir``, ``patients``, ``bytes`` (patient files + index), ``seconds``, ``warnings``.
    """
    from MambaDoseLib.openkbp import list_patient_dirs
    from tqdm import tqdm

    start = time.perf_counter()
    folders = list_patient_dirs(split_dir)
    if not folders:
        raise InputError(f"{split_dir}: no pt_<N> patient folders")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), str(cache), require_dose) for folder in folders]
    bar = tqdm(total=len(jobs), desc="caching patients", unit="patient", disable=not progress)
    entries: list[dict] = []
    try:
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for entry in pool.imap(_cache_one_star, jobs):
                    entries.append(entry)
                    bar.update()
        else:
            for job in jobs:
                entries.append(_cache_one(*job))
                bar.update()
    finally:
        bar.close()
    warnings = [w for entry in entries for w in entry["warnings"]]
    for warning in warnings:
        log.warning(warning)
    index_bytes = _write_index(cache, str(Path(split_dir).resolve()), entries)
    return {
        "cache_dir": str(cache),
        "patients": len(entries),
        "bytes": sum(e["bytes"] for e in entries) + len(index_bytes),
        "seconds": time.perf_counter() - start,
        "warnings": warnings,
    }


def _write_index(cache: Path, source: str | list[str], entries: list[dict]) -> bytes:
    """Write ``cache/index.json`` (atomically, last: it marks the cache complete) for ``entries``
    from ``source``; returns the bytes written."""
    index = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source": source,
        "quantisation": QUANTISATION,
        "patients": entries,
    }
    data = json.dumps(index, indent=1).encode()
    _write_atomic(cache / INDEX_FILE, data)
    return data


def read_index(cache_dir: str | os.PathLike) -> dict:
    """The cache's ``index.json``; InputError when missing, unreadable or of another format."""
    path = Path(cache_dir) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: missing (not a cache folder? build one with 'mambadose preprocess')"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not a {FORMAT_NAME} index")
    if index.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: cache format version {index.get('format_version')}, this code reads {FORMAT_VERSION}; "
            "rebuild it with 'mambadose preprocess'"
        )
    return index


def list_cached(cache_dir: str | os.PathLike) -> list[str]:
    """Patient ids of the cache, in the order of the split (pt_2 before pt_10)."""
    return [entry["id"] for entry in read_index(cache_dir)["patients"]]


def combine_caches(
    parts: list[tuple[str | os.PathLike, list[str] | None]], cache_dir: str | os.PathLike
) -> dict:
    """A new cache folder holding the patients ``ids`` of each ``(source cache, ids)`` part (``None``:
    all of that cache), in the order given: e.g. the training patients plus half of the validation
    patients, for cross-fitted runs or a final network trained on every patient.

    Patient files are hard-linked where the file system allows it, else copied (atomically); the
    index entries are the sources' own, and the index is written last. Refuses (InputError naming
    the cache or patient), before writing anything, a source of another format or quantisation, an
    id a source lacks or whose file is missing, a patient listed twice, and an output folder that
    already holds an index (a cache is never overwritten; patient files left in a folder without
    an index, by an interrupted call, are replaced). Returns ``cache_dir``, ``patients`` and
    ``sources``.
    """
    out = Path(cache_dir)
    if (out / INDEX_FILE).exists():
        raise InputError(f"{out / INDEX_FILE}: already exists; choose a new folder")
    entries: list[dict] = []
    files: list[tuple[Path, Path]] = []
    sources: list[str] = []
    seen: set[str] = set()
    for source, ids in parts:
        index = read_index(source)
        if index.get("quantisation") != QUANTISATION:
            raise InputError(f"{Path(source) / INDEX_FILE}: another quantisation than this code writes")
        by_id = {entry["id"]: entry for entry in index["patients"]}
        for pid in by_id if ids is None else ids:
            if pid not in by_id:
                raise InputError(f"{Path(source) / INDEX_FILE}: no patient {pid}")
            if pid in seen:
                raise InputError(f"{out}: patient {pid} given twice")
            seen.add(pid)
            src = Path(source) / by_id[pid]["file"]
            if not src.is_file():
                raise InputError(f"{src}: listed in its cache's index but missing")
            entries.append(by_id[pid])
            files.append((src, out / by_id[pid]["file"]))
        earlier = index.get("source", str(source))  # a combined cache lists its sources
        sources.extend(earlier if isinstance(earlier, list) else [str(earlier)])
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in files:
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            _write_atomic(dst, src.read_bytes())
    _write_index(out, sources, entries)
    return {"cache_dir": str(out), "patients": len(entries), "sources": sources}


def write_patients(
    patients: Iterable[Patient], cache_dir: str | os.PathLike, source: str | list[str], preset: int = 1
) -> dict:
    """A new cache folder of ``patients`` (e.g. cached patients given a first-stage dose,
    ``Patient.prior_dose_gy``, for a cascade's second stage: ``benchmarks/cascade_priors.py``), in
    the order given; ``source`` is recorded in the index (the caches they came from). Patient
    files are written atomically with LZMA2 ``preset`` (default 1: fast, the files a little larger
    than ``build_cache``'s); the index last. Refuses (InputError) a folder that already holds an
    index and a patient given twice. Returns ``cache_dir`` and ``patients``.
    """
    out = Path(cache_dir)
    if (out / INDEX_FILE).exists():
        raise InputError(f"{out / INDEX_FILE}: already exists; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    seen: set[str] = set()
    for patient in patients:
        if patient.patient_id in seen:
            raise InputError(f"{out}: patient {patient.patient_id} given twice")
        seen.add(patient.patient_id)
        entries.append(_write_patient(patient, out, [], preset))
    _write_index(out, source, entries)
    return {"cache_dir": str(out), "patients": len(entries)}


def load_patient(cache_dir: str | os.PathLike, patient_id: str) -> Patient:
    """One cached patient as a dense ``Patient`` (see ``decode_patient`` for the precision)."""
    path = patient_file(cache_dir, patient_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: patient {patient_id} is not in the cache") from None
    try:
        return decode_patient(data, patient_id)
    except (lzma.LZMAError, ValueError, KeyError, OSError) as exc:
        raise InputError(
            f"{path}: corrupted cache file ({exc}); rebuild with 'mambadose preprocess'"
        ) from None


def load_all(cache_dir: str | os.PathLike, ids: list[str] | None = None) -> list[Patient]:
    """The cached patients ``ids`` (default: all, in index order)."""
    return [load_patient(cache_dir, pid) for pid in (list_cached(cache_dir) if ids is None else ids)]
