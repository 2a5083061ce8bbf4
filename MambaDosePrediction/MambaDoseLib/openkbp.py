"""OpenKBP patient folders: validated reading into dense arrays and writing of the sparse format.

A patient folder ``pt_<N>/`` holds sparse CSV files (header ``,data``, then one row per voxel):
``ct.csv`` and ``dose.csv`` (``flat_index,value``), ``possible_dose_mask.csv`` and ``<ROI>.csv``
(``flat_index,``, an empty value marks membership), and ``voxel_dimensions.csv`` (three voxel sizes
in mm, one per line). ``flat_index`` is the C-order index into the 128 x 128 x 128 volume. A missing
``<ROI>.csv`` means that ROI was not contoured; ``dose.csv`` is absent for test patients.

Reading is vectorised (byte-level checks with numpy, parsing with pandas' C reader) and strict: any
malformed file raises :class:`InputError` with a one-line message naming the file and the 1-based
line number, and nothing is returned. Writing produces the challenge's submission format
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
_MAX_SHOWN = 40  # characters of a bad token quoted in a message

_DIGITS = np.zeros(256, bool)
_DIGITS[np.frombuffer(b"0123456789", np.uint8)] = True
_ALLOWED = {
    "mask": _DIGITS | np.isin(np.arange(256), np.frombuffer(b",\r\n", np.uint8)),
    "values": _DIGITS | np.isin(np.arange(256), np.frombuffer(b",\r\n.+-eE", np.uint8)),
}


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
    present = {p.name for p in folder.iterdir()}
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
    body = _body_after_header(path, _read_text(path))
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
    text = _read_text(path)
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


def _read_text(path: Path) -> str:
    """The file's text; bytes map one-to-one to characters (latin-1) so bad bytes reach the checks."""
    try:
        return path.read_bytes().decode("latin-1")
    except FileNotFoundError:
        raise InputError(f"{path}: file missing") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a CSV file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _body_after_header(path: Path, text: str) -> str:
    """The rows after the ``,data`` header line, trailing line breaks removed (may be empty)."""
    if not text:
        raise InputError(f"{path}: empty file, expected the header {HEADER!r}")
    header, _, body = text.partition("\n")
    if header.rstrip("\r") != HEADER:
        raise InputError(f"{path}: line 1: bad header {_show(header.rstrip(chr(13)))}, expected {HEADER!r}")
    return body.rstrip("\r\n")


def _parse_rows(path: Path, body: str, kind: SparseKind, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the row layout of ``body`` (vectorised) and parse it: (int64 indices, float64 values).

    values is None for a mask. Every row must be ``digits,`` (mask) or ``digits,number``; the first
    row that is not raises InputError with its line number.
    """
    if not body:
        return np.zeros(0, np.int64), (None if kind == "mask" else np.zeros(0, np.float64))
    raw = np.frombuffer(body.encode("latin-1"), np.uint8)
    bad_line = _first_malformed_line(raw, "mask" if kind == "mask" else "values")
    if bad_line is not None:
        _raise_row_error(path, body, bad_line, kind, size)
    import pandas as pd

    try:
        if kind == "mask":
            frame = pd.read_csv(io.StringIO(body), header=None, usecols=[0], dtype=np.int64, engine="c")
            return frame[0].to_numpy(np.int64), None
        frame = pd.read_csv(
            io.StringIO(body),
            header=None,
            names=["index", "value"],
            dtype={"index": np.int64, "value": np.float64},
            engine="c",
        )
    except Exception as exc:  # a token that passed the character checks but is no number ("1.2.3")
        _raise_first_bad_row(path, body, kind, size, exc)
    indices = frame["index"].to_numpy(np.int64)
    values = frame["value"].to_numpy(np.float64)
    return indices, values


def _first_malformed_line(raw: np.ndarray, charset: Literal["mask", "values"]) -> int | None:
    """0-based number (within the body) of the first line that breaks the row layout, or None.

    raw: the body's bytes. A row is ``<1..18 digits>,<value>`` with an optional ``\\r`` before the
    line break; ``<value>`` is empty for masks, else a non-empty run of ``0-9 . + - e E`` whose signs
    open the value or its exponent. Whether a value is a well-formed number is left to the parser.
    """
    n = raw.size
    line_breaks = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate(([0], line_breaks + 1))
    ends = np.concatenate((line_breaks, [n]))
    ends = ends - ((ends > starts) & (raw[np.maximum(ends - 1, 0)] == ord("\r")))

    def line_of(positions: np.ndarray) -> list[int]:
        return np.searchsorted(line_breaks, positions, side="right").tolist()

    bad = line_of(_first_true(~_ALLOWED[charset][raw]))
    carriage_returns = np.flatnonzero(raw == ord("\r"))
    stray = carriage_returns[raw[np.minimum(carriage_returns + 1, n - 1)] != ord("\n")]
    bad += line_of(stray[:1])
    commas = np.flatnonzero(raw == ord(","))
    one_per_line = commas.size == starts.size and bool(np.all((commas >= starts) & (commas < ends)))
    if not one_per_line:
        commas_per_line = np.bincount(
            np.searchsorted(line_breaks, commas, side="right"), minlength=starts.size
        )
        bad += _first_true(commas_per_line != 1).tolist()
    if bad:
        return min(bad)

    index_length = commas - starts
    value_length = ends - commas - 1
    bad += _first_true((index_length < 1) | (index_length > _MAX_INDEX_DIGITS)).tolist()
    bad += _first_true(value_length != 0 if charset == "mask" else value_length < 1).tolist()
    if charset == "values":
        # the index field is all digits when the first non-digit byte of every line is its comma
        # (masks need no such check: their only non-digit bytes are the comma and line breaks)
        punctuation = np.flatnonzero(~_DIGITS[raw] & (raw != ord("\n")) & (raw != ord("\r")))
        first_punctuation = punctuation[np.searchsorted(punctuation, starts)]
        bad += _first_true(first_punctuation != commas).tolist()
        signs = np.flatnonzero((raw == ord("+")) | (raw == ord("-")))
        before = raw[np.maximum(signs - 1, 0)]
        misplaced = signs[(before != ord(",")) & (before != ord("e")) & (before != ord("E"))]
        bad += line_of(misplaced[:1])
    return min(bad) if bad else None


def _first_true(flags: np.ndarray) -> np.ndarray:
    """Position of the first True of ``flags`` as a 0- or 1-element array."""
    return np.flatnonzero(flags)[:1]


def _raise_row_error(path: Path, body: str, body_line: int, kind: SparseKind, size: int) -> None:
    """Raise the InputError for 0-based body line ``body_line`` (file line ``body_line + 2``)."""
    line = body.split("\n", body_line + 1)[body_line]
    reason = _diagnose_row(line, kind, size) or "malformed row"
    raise InputError(f"{path}: line {body_line + 2}: {reason}")


def _raise_first_bad_row(path: Path, body: str, kind: SparseKind, size: int, exc: Exception) -> None:
    """Slow path after a parser failure: find the first row that explains it, line by line."""
    for body_line, line in enumerate(body.split("\n")):
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


def _checked_values(path: Path, body: str, values: np.ndarray, kind: SparseKind, size: int) -> np.ndarray:
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
