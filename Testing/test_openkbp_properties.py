"""Property tests of the OpenKBP reader: every corruption ends in an InputError that names the file.

Small synthetic patients (5 x 6 x 7 voxels) are written with ``openkbp.write_patient`` into a fresh
temporary folder per example, one file is corrupted, and the folder is read back.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from MambaDoseLib import openkbp
from MambaDoseLib.errors import InputError
from MambaDoseLib.patient import Patient

SHAPE = (5, 6, 7)
SIZE = int(np.prod(SHAPE))
SPARSE_FILES = ("ct.csv", "dose.csv", "possible_dose_mask.csv", "PTV70.csv", "Larynx.csv")
VALUE_FILES = ("ct.csv", "dose.csv")
MASK_FILES = ("possible_dose_mask.csv", "PTV70.csv", "Larynx.csv")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _patient(seed: int) -> Patient:
    """A random valid patient; every sparse file has at least two rows."""
    rng = np.random.default_rng(seed)
    possible = rng.random(SHAPE) < 0.5
    possible.flat[:2] = True
    structures = {}
    for name in ("PTV70", "Larynx"):
        mask = rng.random(SHAPE) < 0.3
        mask.flat[2:4] = True
        structures[name] = mask
    ct = rng.integers(1, 3000, SHAPE).astype(np.float32)
    dose = np.where(possible, np.round(rng.uniform(0.001, 80.0, SHAPE), 3), 0).astype(np.float32)
    return Patient("pt_5", ct, (3.906, 3.906, 2.5), possible, structures, dose)


def _check_read_fails(folder: Path, name: str) -> str:
    """Read ``folder``; it must raise InputError whose one-line message starts with the file's path."""
    try:
        openkbp.read_patient(folder, shape=SHAPE)
    except InputError as exc:
        message = str(exc)
        assert message.startswith(f"{folder / name}: "), message
        assert "\n" not in message, message
        return message
    raise AssertionError(f"corrupted {name} was read without an error")


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _set_rows(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n")


def _replace_value_and_read(path: Path, token: str, data) -> tuple[int, str]:
    """Put ``token`` as the value of a random data row of ``path``; return (row, the reader's error)."""
    rows = _rows(path)
    row = data.draw(st.integers(1, len(rows) - 1))
    rows[row] = rows[row].split(",")[0] + "," + token
    _set_rows(path, rows)
    return row, _check_read_fails(path.parent, path.name)


class _Folder:
    """A fresh patient folder for one hypothesis example."""

    def __init__(self, seed: int):
        self._tmp = tempfile.TemporaryDirectory()
        self.path = Path(self._tmp.name) / "pt_5"
        openkbp.write_patient(_patient(seed), self.path)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


seeds = st.integers(0, 2**16)
# text that is never a number: no line breaks or commas, so the row layout stays "index,value"
garbage = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="\n\r,"), min_size=1, max_size=12
).map(lambda s: s if not NUMBER.fullmatch(s) else s + "x")
non_finite = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "+inf", "1e39", "-1e400"])


@SETTINGS
@given(seed=seeds, name=st.sampled_from(VALUE_FILES), token=garbage, data=st.data())
def test_garbage_value_token(seed, name, token, data):
    with _Folder(seed) as folder:
        row, message = _replace_value_and_read(folder / name, token, data)
        assert f"line {row + 1}:" in message


@SETTINGS
@given(seed=seeds, name=st.sampled_from(SPARSE_FILES), token=garbage, data=st.data())
def test_garbage_index_token(seed, name, token, data):
    assume(not re.fullmatch(r"\d+", token))
    with _Folder(seed) as folder:
        rows = _rows(folder / name)
        row = data.draw(st.integers(1, len(rows) - 1))
        rows[row] = token + "," + rows[row].split(",")[1]
        _set_rows(folder / name, rows)
        message = _check_read_fails(folder, name)
        assert f"line {row + 1}:" in message


@SETTINGS
@given(seed=seeds, name=st.sampled_from(VALUE_FILES), token=non_finite, data=st.data())
def test_nan_and_infinite_values(seed, name, token, data):
    with _Folder(seed) as folder:
        row, message = _replace_value_and_read(folder / name, token, data)
        assert f"line {row + 1}:" in message and ("NaN" in message or "infinite" in message)


@SETTINGS
@given(seed=seeds, dose=st.floats(max_value=-1e-30, min_value=-1e30), data=st.data())
def test_negative_dose(seed, dose, data):
    with _Folder(seed) as folder:
        rows = _rows(folder / "dose.csv")
        row = data.draw(st.integers(1, len(rows) - 1))
        rows[row] = rows[row].split(",")[0] + "," + repr(dose)
        _set_rows(folder / "dose.csv", rows)
        message = _check_read_fails(folder, "dose.csv")
        assert f"line {row + 1}: negative dose" in message


@SETTINGS
@given(seed=seeds, name=st.sampled_from(SPARSE_FILES), data=st.data())
def test_duplicate_index(seed, name, data):
    with _Folder(seed) as folder:
        rows = _rows(folder / name)
        source = data.draw(st.integers(1, len(rows) - 1))
        target = data.draw(st.integers(1, len(rows)))
        rows.insert(target, rows[source])
        _set_rows(folder / name, rows)
        message = _check_read_fails(folder, name)
        assert "duplicate index" in message


@SETTINGS
@given(
    seed=seeds,
    name=st.sampled_from(SPARSE_FILES),
    index=st.one_of(st.integers(SIZE, 10**30), st.integers(-(10**30), -1)),
    data=st.data(),
)
def test_out_of_range_index(seed, name, index, data):
    with _Folder(seed) as folder:
        rows = _rows(folder / name)
        row = data.draw(st.integers(1, len(rows) - 1))
        rows[row] = str(index) + "," + rows[row].split(",")[1]
        _set_rows(folder / name, rows)
        message = _check_read_fails(folder, name)
        assert f"line {row + 1}: index {index} out of range" in message


@SETTINGS
@given(
    seed=seeds,
    name=st.sampled_from(MASK_FILES),
    token=st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=8),
    data=st.data(),
)
def test_mask_row_with_a_value(seed, name, token, data):
    with _Folder(seed) as folder:
        rows = _rows(folder / name)
        row = data.draw(st.integers(1, len(rows) - 1))
        rows[row] = rows[row] + token
        (folder / name).write_bytes(("\n".join(rows) + "\n").encode("utf-8"))
        _check_read_fails(folder, name)


@SETTINGS
@given(seed=seeds, name=st.sampled_from(SPARSE_FILES), header=st.text(max_size=10))
def test_wrong_header(seed, name, header):
    assume(header.split("\n")[0].rstrip("\r") != ",data")
    with _Folder(seed) as folder:
        rows = _rows(folder / name)
        rows[0] = header
        (folder / name).write_bytes(("\n".join(rows) + "\n").encode("utf-8"))
        _check_read_fails(folder, name)


@SETTINGS
@given(seed=seeds, keep=st.integers(0, 2), extra=st.sampled_from(["", "\n", "\n\n"]))
def test_truncated_voxel_dimensions(seed, keep, extra):
    with _Folder(seed) as folder:
        path = folder / "voxel_dimensions.csv"
        path.write_text("".join(line + "\n" for line in _rows(path)[:keep]) + extra)
        message = _check_read_fails(folder, "voxel_dimensions.csv")
        assert f"found {keep}" in message


@SETTINGS
@given(
    seed=seeds, name=st.sampled_from(SPARSE_FILES + ("voxel_dimensions.csv",)), blob=st.binary(max_size=200)
)
def test_random_bytes(seed, name, blob):
    with _Folder(seed) as folder:
        (folder / name).write_bytes(blob)
        try:
            patient = openkbp.read_patient(folder, shape=SHAPE)
        except InputError as exc:
            assert str(exc).startswith(f"{folder / name}: ") and "\n" not in str(exc)
            return
        # the only bytes that may pass are a valid file (e.g. header-only sparse file, "1 2 3")
        if name == "voxel_dimensions.csv":
            assert len(patient.spacing_mm) == 3 and all(s > 0 for s in patient.spacing_mm)
        else:
            assert blob.startswith(b",data")


@SETTINGS
@given(seed=seeds, name=st.sampled_from(SPARSE_FILES), data=st.data())
def test_random_bytes_inside_a_row(seed, name, data):
    with _Folder(seed) as folder:
        raw = (folder / name).read_bytes()
        header_end = raw.index(b"\n") + 1
        position = data.draw(st.integers(header_end, len(raw) - 1))
        junk = data.draw(st.binary(min_size=1, max_size=4).filter(lambda b: not b.isdigit()))
        (folder / name).write_bytes(raw[:position] + junk + raw[position:])
        try:
            openkbp.read_patient(folder, shape=SHAPE)
        except InputError as exc:
            assert str(exc).startswith(f"{folder / name}: ") and "\n" not in str(exc)


# Valid data round-trips exactly -----------------------------------------------------------------

doses = hnp.arrays(
    np.float32,
    SHAPE,
    elements=st.one_of(
        st.floats(min_value=0.0, max_value=1e6, width=32, allow_subnormal=True),
        st.integers(0, 80_000).map(lambda n: np.float32(n / 1000)),
    ),
    fill=st.just(np.float32(0.0)),
)


@SETTINGS
@given(values=doses)
def test_sparse_dose_round_trip_is_exact(values):
    dose = values
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pt_1.csv"
        openkbp.write_sparse_dose(path, dose)
        again = openkbp.read_sparse_dose(path, shape=SHAPE)
        assert again.dtype == np.float32
        assert np.array_equal(again.view(np.uint32), np.where(dose > 0, dose, 0).view(np.uint32))
        assert len(_rows(path)) - 1 == np.count_nonzero(dose > 0)


@SETTINGS
@given(seed=seeds)
def test_patient_round_trip_is_exact(seed):
    patient = _patient(seed)
    with tempfile.TemporaryDirectory() as tmp:
        openkbp.write_patient(patient, Path(tmp) / "pt_5")
        again = openkbp.read_patient(Path(tmp) / "pt_5", shape=SHAPE)
    assert again.spacing_mm == patient.spacing_mm
    assert np.array_equal(again.ct, patient.ct)
    assert np.array_equal(again.dose_gy.view(np.uint32), patient.dose_gy.view(np.uint32))
    assert np.array_equal(again.possible_dose_mask, patient.possible_dose_mask)
    assert again.structures.keys() == patient.structures.keys()
    for name, mask in patient.structures.items():
        assert np.array_equal(again.structures[name], mask)
