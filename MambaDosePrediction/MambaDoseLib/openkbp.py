"""OpenKBP patient folders: validated reading into dense arrays and writing of the sparse format.

A patient folder ``pt_<N>/`` holds sparse CSV files (header ``,data``, then one row per voxel):
``ct.csv`` and ``dose.csv`` (``flat_index,value``), ``possible_dose_mask.csv`` and ``<ROI>.csv``
(``flat_index,``, an empty value marks membership), and ``voxel_dimensions.csv`` (three voxel sizes
in mm, one per line). ``flat_index`` is the C-order index into the 128 x 128 x 128 volume. A missing
``<ROI>.csv`` means that ROI was not contoured; ``dose.csv`` is absent for test patients.

Reading is vectorised (row layout checked and indices parsed per character position with numpy,
values parsed by pandas' C reader; no loop over rows) and strict: any malformed file raises
:class:`InputError` with a one-line message naming the file and the 1-based line number, and
nothing is returned. Writing produces the challenge's submission format
(``pt_<N>.csv`` with rows ``flat_index,dose`` for voxels with dose > 0) through a temporary file
and an atomic rename; float32 values are written in their shortest round-trip form, so
``read_sparse_dose(write_sparse_dose(x))`` equals ``x`` bit for bit.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import InputError
from .patient import Patient
from .rois import ROI_NAMES

log = logging.getLogger(__name__)

#: Shape of every OpenKBP volume (voxels along axes 0, 1, 2).
VOLUME_SHAPE: tuple[int, int, int] = (128, 128, 128)
#: First line of every sparse CSV file.
HEADER = ",data"

CT_FILE = "ct.csv"
DOSE_FILE = "dose.csv"
POSSIBLE_DOSE_MASK_FILE = "possible_dose_mask.csv"
VOXEL_DIMENSIONS_FILE = "voxel_dimensions.csv"
#: Files every patient folder must hold; ``dose.csv`` and the ROI files are optional.
REQUIRED_FILES: tuple[str, ...] = (CT_FILE, POSSIBLE_DOSE_MASK_FILE, VOXEL_DIMENSIONS_FILE)
#: Every file name the reader understands.
KNOWN_FILES: frozenset[str] = frozenset((*REQUIRED_FILES, DOSE_FILE, *(f"{name}.csv" for name in ROI_NAMES)))

#: ``ct``: any finite value; ``dose``: finite and >= 0 (Gy); ``mask``: rows ``flat_index,``.
SparseKind = Literal["ct", "dose", "mask"]

_PATIENT_DIR = re.compile(r"pt_(\d+)")
_INDEX_TOKEN = re.compile(r"\d+")
_SIGNED_INT_TOKEN = re.compile(r"[+-]?\d+")
_NUMBER_TOKEN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MAX_INDEX_DIGITS = 18  # int64 holds any 18-digit number
_MAX_VALUE_CHARS = 32  # longer than any float's shortest decimal form (24 characters)
_MAX_SHOWN = 40  # characters of a bad token quoted in a message


# Folders ---------------------------------------------------------------------------------------


def list_patient_dirs(split_dir: str | os.PathLike) -> list[Path]:
    """The ``pt_<N>`` folders of an OpenKBP split folder, sorted by N (``pt_2`` before ``pt_10``)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise InputError(f"{split_dir}: not a folder (expected an OpenKBP split with pt_<N>/ folders)")
    found = [(int(m.group(1)), p) for p in split_dir.iterdir() if (m := _PATIENT_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def read_patient(folder: str | os.PathLike, shape: tuple[int, int, int] = VOLUME_SHAPE) -> Patient:
    """Read and validate one OpenKBP patient folder into a :class:`Patient`.

    folder: ``pt_<N>/`` with ct.csv, possible_dose_mask.csv, voxel_dimensions.csv (required),
      dose.csv and ``<ROI>.csv`` (optional; ``Patient.structures`` holds only the ROIs present).
    shape: volume shape (I, J, K); OpenKBP's is 128^3 (smaller shapes serve tests).
    Returns arrays in the OpenKBP layout a[i, j, k]: ct float32 (offset CT, HU + 1024), dose_gy
    float32 Gy (None without dose.csv), bool masks; spacing_mm from voxel_dimensions.csv.
    Raises InputError (file and line named) on a missing required file or any malformed content.
    Unknown extra files are ignored with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: patient folder does not exist or is not a folder")
    try:
        present = {p.name for p in folder.iterdir()}
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    for name in REQUIRED_FILES:
        if name not in present:
            raise InputError(f"{folder / name}: required file missing")
    unknown = sorted(present - KNOWN_FILES)
    if unknown:
        log.warning("%s: ignoring unknown file(s): %s", folder, ", ".join(unknown))

    spacing_mm = read_voxel_dimensions(folder / VOXEL_DIMENSIONS_FILE)
    ct = read_sparse(folder / CT_FILE, "ct", shape)
    possible_dose_mask = read_sparse(folder / POSSIBLE_DOSE_MASK_FILE, "mask", shape)
    dose_gy = read_sparse(folder / DOSE_FILE, "dose", shape) if DOSE_FILE in present else None
    structures = {
        name: read_sparse(folder / f"{name}.csv", "mask", shape)
        for name in ROI_NAMES
        if f"{name}.csv" in present
    }
    return Patient(
        patient_id=folder.name,
        ct=ct,
        spacing_mm=spacing_mm,
        possible_dose_mask=possible_dose_mask,
        structures=structures,
        dose_gy=dose_gy,
    )


# Sparse files: reading -------------------------------------------------------------------------


def read_sparse(
    path: str | os.PathLike, kind: SparseKind, shape: tuple[int, int, int] = VOLUME_SHAPE
) -> np.ndarray:
    """Read one sparse OpenKBP CSV into a dense array of ``shape``.

    kind: ``"ct"`` -> float32 (any finite value), ``"dose"`` -> float32 Gy (finite, >= 0),
      ``"mask"`` -> bool (rows must be ``flat_index,`` with an empty value).
    Voxels without a row are 0 / False. Raises InputError naming the file and line.
    """
    if kind not in ("ct", "dose", "mask"):
        raise ValueError(f"kind must be 'ct', 'dose' or 'mask', got {kind!r}")
    path = Path(path)
    size = math.prod(shape)
    body = _body_after_header(path, _read_bytes(path))
    indices, values = _parse_rows(path, body, kind, size)
    _check_indices(path, indices, size)
    if kind == "mask":
        mask = np.zeros(size, bool)
        mask[indices] = True
        return mask.reshape(shape)
    values32 = _checked_values(path, body, values, kind, size)
    dense = np.zeros(size, np.float32)
    dense[indices] = values32
    return dense.reshape(shape)


def read_sparse_dose(path: str | os.PathLike, shape: tuple[int, int, int] = VOLUME_SHAPE) -> np.ndarray:
    """A sparse dose file (``dose.csv`` or a submission ``pt_<N>.csv``) as float32 Gy of ``shape``."""
    return read_sparse(path, "dose", shape)


def read_voxel_dimensions(path: str | os.PathLike) -> tuple[float, float, float]:
    """The three voxel sizes (mm, along axes 0, 1, 2) of ``voxel_dimensions.csv``.

    Numbers may be separated by newlines (OpenKBP's layout), blanks or commas; there must be exactly
    three, each positive and finite. Raises InputError naming the file (and line) otherwise.
    """
    path = Path(path)
    text = _read_bytes(path).decode("latin-1")
    tokens = [
        (line_no, token)
        for line_no, line in enumerate(text.splitlines(), start=1)
        for token in re.split(r"[\s,]+", line.strip())
        if token
    ]
    for line_no, token in tokens:
        if not (_NUMBER_TOKEN.fullmatch(token) or token.lower().lstrip("+-") in ("nan", "inf", "infinity")):
            raise InputError(f"{path}: line {line_no}: voxel size {_show(token)} is not a number")
        value = float(token)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{path}: line {line_no}: voxel size {token} mm is not positive and finite")
    if len(tokens) != 3:
        raise InputError(f"{path}: expected exactly 3 voxel sizes (mm), found {len(tokens)}")
    return tuple(float(token) for _, token in tokens)  # type: ignore[return-value]


def _read_bytes(path: Path) -> bytes:
    """The file's content; messages decode it as latin-1 (one character per byte, never fails)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file missing") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _body_after_header(path: Path, text: bytes) -> bytes:
    """The rows after the ``,data`` header line, trailing line breaks removed (may be empty)."""
    if not text:
        raise InputError(f"{path}: empty file, expected the header {HEADER!r}")
    header, _, body = text.partition(b"\n")
    header = header.rstrip(b"\r").decode("latin-1")
    if header != HEADER:
        raise InputError(f"{path}: line 1: bad header {_show(header)}, expected {HEADER!r}")
    return body.rstrip(b"\r\n")


def _parse_rows(path: Path, body: bytes, kind: SparseKind, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the row layout of ``body`` (vectorised) and parse it: (int64 indices, float64 values).

    values is None for a mask. Every row must be ``digits,`` (mask) or ``digits,number``; the first
    row that is not raises InputError with its line number.
    """
    if not body:
        return np.zeros(0, np.int64), (None if kind == "mask" else np.zeros(0, np.float64))
    rows = _scan_rows(np.frombuffer(body, np.uint8), kind)
    if isinstance(rows, int):
        _raise_row_error(path, body, rows, kind, size)
    if kind == "mask":
        return rows, None
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, usecols=[1], dtype=np.float64, engine="c")
    except Exception as exc:  # a value that passed the character checks but is no number ("1.2.3")
        _raise_first_bad_row(path, body, kind, size, exc)
    return rows, frame[1].to_numpy(np.float64)


def _scan_rows(raw: np.ndarray, kind: SparseKind) -> np.ndarray | int:
    """Check the row layout of a body and read its indices, all vectorised over lines.

    raw: the body's bytes (rows after the header). A row is ``<1..18 digits>,<value>`` with an
    optional ``\\r`` before the line break; ``<value>`` is empty for masks, else 1 to
    ``_MAX_VALUE_CHARS`` characters of ``0-9 . + - e E`` whose signs open the value or its exponent
    (whether it is a well-formed number is left to the parser).
    Returns the int64 flat indices, or the 0-based body line number of the first malformed row.
    Every byte of the body is checked: the index and value fields byte by byte (one gather per
    character position), the rest are the one comma and the line break of each row.
    """
    n = raw.size
    line_breaks = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate(([0], line_breaks + 1))
    ends = np.concatenate((line_breaks, [n]))
    ends -= (ends > starts) & (raw[np.maximum(ends - 1, 0)] == ord("\r"))
    commas = np.flatnonzero(raw == ord(","))
    if commas.size != starts.size or not np.all((commas >= starts) & (commas < ends)):
        commas_per_line = np.bincount(
            np.searchsorted(line_breaks, commas, side="right"), minlength=starts.size
        )
        return int(_first_true(commas_per_line != 1)[0])

    index_length = commas - starts
    value_length = ends - commas - 1
    bad = (index_length < 1) | (index_length > _MAX_INDEX_DIGITS)
    bad |= (value_length != 0) if kind == "mask" else ((value_length < 1) | (value_length > _MAX_VALUE_CHARS))
    if bad.any():
        return int(_first_true(bad)[0])

    indices = np.zeros(starts.size, np.int64)
    for position in range(int(index_length.max())):  # from the last digit backwards
        present = index_length > position
        digit = raw[np.where(present, commas - 1 - position, 0)] - np.uint8(ord("0"))
        bad |= present & (digit > 9)
        indices += np.where(present, digit, 0).astype(np.int64) * 10**position
    if kind != "mask":
        bad |= _bad_value_characters(raw, commas, value_length)
    if bad.any():
        return int(_first_true(bad)[0])
    return indices


def _bad_value_characters(raw: np.ndarray, commas: np.ndarray, value_length: np.ndarray) -> np.ndarray:
    """Per row: True where the value field holds a byte other than ``0-9 . e E``, or a sign that
    neither opens the value nor follows an ``e``/``E``."""
    bad = np.zeros(commas.size, bool)
    previous_is_exponent = np.ones(commas.size, bool)  # a sign may open the value
    for position in range(int(value_length.max())):
        present = value_length > position
        char = raw[np.where(present, commas + 1 + position, 0)]
        is_exponent = (char | 0x20) == ord("e")
        is_sign = (char == ord("+")) | (char == ord("-"))
        allowed = ((char - np.uint8(ord("0"))) < 10) | (char == ord(".")) | is_exponent
        allowed |= is_sign & previous_is_exponent
        bad |= present & ~allowed
        previous_is_exponent = is_exponent
    return bad


def _first_true(flags: np.ndarray) -> np.ndarray:
    """Position of the first True of ``flags`` as a 0- or 1-element array."""
    return np.flatnonzero(flags)[:1]


def _raise_row_error(path: Path, body: bytes, body_line: int, kind: SparseKind, size: int) -> None:
    """Raise the InputError for 0-based body line ``body_line`` (file line ``body_line + 2``)."""
    line = body.split(b"\n", body_line + 1)[body_line].decode("latin-1")
    reason = _diagnose_row(line, kind, size) or "malformed row"
    raise InputError(f"{path}: line {body_line + 2}: {reason}")


def _raise_first_bad_row(path: Path, body: bytes, kind: SparseKind, size: int, exc: Exception) -> None:
    """Slow path after a parser failure: find the first row that explains it, line by line."""
    for body_line, line in enumerate(body.decode("latin-1").split("\n")):
        reason = _diagnose_row(line, kind, size)
        if reason is not None:
            raise InputError(f"{path}: line {body_line + 2}: {reason}") from None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise InputError(f"{path}: cannot parse rows ({first})") from None


def _diagnose_row(line: str, kind: SparseKind, size: int) -> str | None:
    """Why one row is invalid, in words; None when it is a valid row."""
    line = line[:-1] if line.endswith("\r") else line
    if not line.strip():
        return "empty line"
    fields = line.split(",")
    if len(fields) != 2:
        expected = "'index,'" if kind == "mask" else "'index,value'"
        return f"expected 2 comma-separated fields {expected}, found {len(fields)}"
    index_token, value_token = fields
    if len(index_token) > _MAX_INDEX_DIGITS and _INDEX_TOKEN.fullmatch(index_token):
        shown = (
            index_token
            if len(index_token) <= _MAX_SHOWN
            else f"{index_token[:20]}... ({len(index_token)} digits)"
        )
        return f"index {shown} out of range [0, {size})"
    if not _INDEX_TOKEN.fullmatch(index_token):
        if _SIGNED_INT_TOKEN.fullmatch(index_token):
            return f"index {index_token} out of range [0, {size})"
        return f"index {_show(index_token)} is not a non-negative integer"
    if int(index_token) >= size:
        return f"index {index_token} out of range [0, {size})"
    if kind == "mask":
        return f"mask row has a value {_show(value_token)} (expected 'index,')" if value_token else None
    return _diagnose_value(value_token, kind)


def _diagnose_value(token: str, kind: SparseKind) -> str | None:
    """Why a CT or dose value token is invalid; None when it is a valid value."""
    if not token:
        return "missing value"
    if len(token) > _MAX_VALUE_CHARS:
        return f"value {_show(token)} is longer than {_MAX_VALUE_CHARS} characters"
    word = token.strip().lower().lstrip("+-")
    if word in ("nan", "na", "null", "none"):
        return f"value {_show(token)} is NaN"
    if word in ("inf", "infinity"):
        return f"value {_show(token)} is infinite"
    if not _NUMBER_TOKEN.fullmatch(token):
        return f"value {_show(token)} is not a number"
    value = float(token)
    with np.errstate(over="ignore"):
        finite32 = bool(np.isfinite(np.float32(value)))
    if not finite32:
        return f"value {token} is infinite as float32"
    if kind == "dose" and value < 0:
        return f"negative dose {token} Gy"
    return None


def _check_indices(path: Path, indices: np.ndarray, size: int) -> None:
    """Raise InputError for the first out-of-range or repeated flat index (row r = line r + 2)."""
    out_of_range = _first_true(indices >= size)
    if out_of_range.size:
        row = int(out_of_range[0])
        raise InputError(f"{path}: line {row + 2}: index {indices[row]} out of range [0, {size})")
    seen = np.zeros(size, bool)
    seen[indices] = True
    if np.count_nonzero(seen) == indices.size:
        return
    order = np.argsort(indices, kind="stable")
    repeats = order[1:][indices[order[1:]] == indices[order[:-1]]]  # later rows of each index
    row = int(repeats.min())
    first_row = int(np.flatnonzero(indices == indices[row])[0])
    raise InputError(
        f"{path}: line {row + 2}: duplicate index {indices[row]} (first at line {first_row + 2})"
    )


def _checked_values(path: Path, body: bytes, values: np.ndarray, kind: SparseKind, size: int) -> np.ndarray:
    """``values`` as float32 after checking they are finite (and >= 0 for a dose)."""
    with np.errstate(over="ignore"):
        values32 = values.astype(np.float32)
    bad = ~np.isfinite(values32)
    if kind == "dose":
        bad |= values < 0
    first = _first_true(bad)
    if first.size:
        _raise_row_error(path, body, int(first[0]), kind, size)
    return values32


def _show(token: str) -> str:
    """A token quoted for a one-line message (escaped, shortened)."""
    shown = repr(token)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 4] + "...'"


# Sparse files: writing -------------------------------------------------------------------------


def write_sparse_dose(path: str | os.PathLike, dose_gy: np.ndarray) -> None:
    """Write a dose (Gy, any shape, C-order flat index) in the sparse submission format, atomically.

    Rows ``flat_index,dose`` for voxels with dose > 0; values are the float32 dose in its shortest
    round-trip decimal form, so :func:`read_sparse_dose` gives back ``dose_gy.astype(float32)``
    exactly (voxels <= 0 read back as 0). Raises ValueError for NaN or infinite doses.
    """
    dose32 = np.asarray(dose_gy, dtype=np.float32).ravel()
    if not np.all(np.isfinite(dose32)):
        raise ValueError(f"{path}: dose has NaN or infinite values; not written")
    indices = np.flatnonzero(dose32 > 0)
    _write_rows(Path(path), indices, dose32[indices].astype(str))


def write_sparse_ct(path: str | os.PathLike, ct: np.ndarray) -> None:
    """Write offset CT numbers (float32) as ``ct.csv`` rows for non-zero voxels, atomically."""
    ct32 = np.asarray(ct, dtype=np.float32).ravel()
    if not np.all(np.isfinite(ct32)):
        raise ValueError(f"{path}: CT has NaN or infinite values; not written")
    indices = np.flatnonzero(ct32 != 0)
    _write_rows(Path(path), indices, ct32[indices].astype(str))


def write_sparse_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a mask (any shape, C-order flat index) as rows ``flat_index,`` for True voxels, atomically."""
    indices = np.flatnonzero(np.asarray(mask, dtype=bool).ravel())
    _write_rows(Path(path), indices, None)


def write_voxel_dimensions(path: str | os.PathLike, spacing_mm: Iterable[float]) -> None:
    """Write ``voxel_dimensions.csv``: three sizes (mm), one per line, in round-trip precision."""
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{path}: voxel size must be three positive finite numbers, got {spacing}")
    _write_text_atomic(Path(path), "".join(f"{s!r}\n" for s in spacing))


def write_patient(patient: Patient, folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write a :class:`Patient` as an OpenKBP folder (ct, dose if any, masks, voxel_dimensions).

    Refuses (InputError) a folder that already holds any of these files unless ``overwrite``.
    Returns the paths written.
    """
    folder = Path(folder)
    names = [CT_FILE, POSSIBLE_DOSE_MASK_FILE, VOXEL_DIMENSIONS_FILE]
    names += [DOSE_FILE] if patient.dose_gy is not None else []
    names += [f"{name}.csv" for name in patient.structures]
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{folder}: already holds {', '.join(existing)}; pass overwrite to replace")
    folder.mkdir(parents=True, exist_ok=True)
    write_sparse_ct(folder / CT_FILE, patient.ct)
    write_sparse_mask(folder / POSSIBLE_DOSE_MASK_FILE, patient.possible_dose_mask)
    write_voxel_dimensions(folder / VOXEL_DIMENSIONS_FILE, patient.spacing_mm)
    if patient.dose_gy is not None:
        write_sparse_dose(folder / DOSE_FILE, patient.dose_gy)
    for name, mask in patient.structures.items():
        write_sparse_mask(folder / f"{name}.csv", mask)
    return [folder / name for name in names]


def _write_rows(path: Path, indices: np.ndarray, values: np.ndarray | None) -> None:
    """Write the header and rows ``index,value`` (``index,`` when values is None)."""
    rows = np.char.add(indices.astype(str), ",")
    if values is not None:
        rows = np.char.add(rows, values)
    lines = [HEADER, *rows.tolist()]
    _write_text_atomic(path, "\n".join(lines) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
