"""OpenKBP reading/writing, NIfTI conversion and ``mambadose convert``: real data and synthetic folders."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from MambaDoseLib import openkbp, volume_io
from MambaDoseLib.errors import InputError
from MambaDoseLib.patient import Patient
from MambaDoseLib.rois import ROI_NAMES

SMALL = (6, 7, 8)  # synthetic volumes: 336 voxels
SIZE = int(np.prod(SMALL))


def _reference_sparse(path: Path, shape=(128, 128, 128)) -> np.ndarray:
    """An independent plain-Python reader of the sparse layout (the data README's recipe)."""
    flat = np.zeros(int(np.prod(shape)), np.float64)
    lines = path.read_text().splitlines()
    assert lines[0] == ",data"
    for line in lines[1:]:
        index, value = line.split(",")
        flat[int(index)] = float(value) if value else 1.0
    return flat.reshape(shape)


def _synthetic_patient(seed: int = 0, shape=SMALL, with_dose: bool = True) -> Patient:
    """A small random patient: every mask and the dose non-empty, doses with 3 decimals."""
    rng = np.random.default_rng(seed)
    possible = rng.random(shape) < 0.6
    possible.flat[0] = True
    ct = np.where(rng.random(shape) < 0.8, rng.integers(1, 3000, shape), 0).astype(np.float32)
    dose = np.where(possible, np.round(rng.uniform(0.0, 75.0, shape), 3), 0.0).astype(np.float32)
    structures = {}
    for name in ("PTV70", "Brainstem", "SpinalCord"):
        mask = rng.random(shape) < 0.2
        mask.flat[1] = True
        structures[name] = mask
    return Patient(
        patient_id="pt_7",
        ct=ct,
        spacing_mm=(3.906, 3.906, 2.5),
        possible_dose_mask=possible,
        structures=structures,
        dose_gy=dose if with_dose else None,
    )


def _write_folder(folder: Path, seed: int = 0, with_dose: bool = True) -> Patient:
    patient = _synthetic_patient(seed, with_dose=with_dose)
    openkbp.write_patient(patient, folder)
    return patient


def _assert_same_patient(a: Patient, b: Patient) -> None:
    assert a.spacing_mm == b.spacing_mm
    assert np.array_equal(a.ct, b.ct)
    assert np.array_equal(a.possible_dose_mask, b.possible_dose_mask)
    assert sorted(a.structures) == sorted(b.structures)
    for name in a.structures:
        assert np.array_equal(a.structures[name], b.structures[name]), name
    assert (a.dose_gy is None) == (b.dose_gy is None)
    if a.dose_gy is not None:
        assert np.array_equal(a.dose_gy.view(np.uint32), b.dose_gy.view(np.uint32))


# Real data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_patient(openkbp_patient_dir) -> Patient:
    return openkbp.read_patient(openkbp_patient_dir)


def test_real_patient_arrays(real_patient, openkbp_patient_dir):
    p = real_patient
    assert p.patient_id == openkbp_patient_dir.name
    for array in (p.ct, p.dose_gy, p.possible_dose_mask, *p.structures.values()):
        assert array.shape == (128, 128, 128)
    assert p.ct.dtype == np.float32 and p.dose_gy.dtype == np.float32
    assert p.possible_dose_mask.dtype == bool
    expected_spacing = tuple(np.loadtxt(openkbp_patient_dir / "voxel_dimensions.csv"))
    assert p.spacing_mm == pytest.approx(expected_spacing, abs=0)
    assert all(2.0 < s < 6.0 for s in p.spacing_mm)
    present = {f.stem for f in openkbp_patient_dir.glob("*.csv")} & set(ROI_NAMES)
    assert set(p.structures) == present and present
    # CT numbers offset by 1024: no negatives, water ~1024 inside the body, bone below ~5000
    body_ct = p.ct[p.possible_dose_mask]
    assert p.ct.min() >= 0 and 1500 < p.ct.max() < 5000
    assert 900 < np.median(body_ct) < 1150
    assert 0 <= p.dose_gy.min() and 50 < p.dose_gy.max() < 100
    for name, mask in p.structures.items():
        assert mask.any(), name


def test_real_patient_matches_plain_reader(real_patient, openkbp_patient_dir):
    ref_dose = _reference_sparse(openkbp_patient_dir / "dose.csv")
    assert np.array_equal(real_patient.dose_gy, ref_dose.astype(np.float32))
    ref_ct = _reference_sparse(openkbp_patient_dir / "ct.csv")
    assert np.array_equal(real_patient.ct, ref_ct.astype(np.float32))
    name = real_patient.contoured_rois[0]
    assert np.array_equal(
        real_patient.structures[name], _reference_sparse(openkbp_patient_dir / f"{name}.csv") > 0
    )


def test_real_csv_round_trip_exact(real_patient, tmp_path):
    written = openkbp.write_patient(real_patient, tmp_path / real_patient.patient_id)
    assert all(p.is_file() for p in written)
    again = openkbp.read_patient(tmp_path / real_patient.patient_id)
    _assert_same_patient(real_patient, again)

    submission = tmp_path / "pred" / f"{real_patient.patient_id}.csv"
    openkbp.write_sparse_dose(submission, real_patient.dose_gy)
    lines = submission.read_text().splitlines()
    assert lines[0] == ",data"
    assert len(lines) - 1 == np.count_nonzero(real_patient.dose_gy > 0)
    dose = openkbp.read_sparse_dose(submission)
    assert np.array_equal(dose.view(np.uint32), real_patient.dose_gy.view(np.uint32))


def test_real_nifti_round_trip_exact(real_patient, tmp_path):
    paths = volume_io.write_patient_nifti(real_patient, tmp_path)
    expected = {"ct.nii.gz", "dose.nii.gz", "possible_dose_mask.nii.gz"}
    expected |= {f"{name}.nii.gz" for name in real_patient.structures}
    assert {p.name for p in paths} == expected == {p.name for p in tmp_path.iterdir()}

    ct, spacing = volume_io.read_nifti_array(tmp_path / "ct.nii.gz")
    assert np.array_equal(ct, real_patient.ct)
    assert spacing == pytest.approx(real_patient.spacing_mm, rel=1e-6)  # NIfTI stores float32
    dose, _ = volume_io.read_nifti_array(tmp_path / "dose.nii.gz")
    assert dose.dtype == np.float32 and np.array_equal(dose, real_patient.dose_gy)
    for name, mask in real_patient.structures.items():
        array, _ = volume_io.read_nifti_array(tmp_path / f"{name}.nii.gz")
        assert np.array_equal(array.astype(bool), mask), name
    # nibabel sees the OpenKBP array a[i, j, k] itself and the voxel size
    image = nib.load(tmp_path / "dose.nii.gz")
    assert np.array_equal(image.get_fdata(), real_patient.dose_gy)
    assert image.header.get_zooms() == pytest.approx(real_patient.spacing_mm, rel=1e-6)
    mask_image = nib.load(tmp_path / "possible_dose_mask.nii.gz")
    assert np.array_equal(mask_image.get_fdata() > 0, real_patient.possible_dose_mask)


# The command -------------------------------------------------------------------------------------


def _convert(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "MambaDoseLib.cli", "convert", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line or "Traceback" in line]


def test_convert_command(openkbp_patient_dir, real_patient, tmp_path):
    out = tmp_path / "nifti"
    result = _convert(openkbp_patient_dir, out)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"ct.nii.gz", "dose.nii.gz", "possible_dose_mask.nii.gz"} | {
        f"{name}.nii.gz" for name in real_patient.structures
    }
    dose, spacing = volume_io.read_nifti_array(out / "dose.nii.gz")
    assert np.array_equal(dose, real_patient.dose_gy)
    assert spacing == pytest.approx(real_patient.spacing_mm, rel=1e-6)

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _convert(openkbp_patient_dir, out)
    assert again.returncode != 0
    errors = _error_lines(again)
    assert len(errors) == 1 and "--overwrite" in errors[0] and str(out) in errors[0], again.stderr
    assert "Traceback" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    assert _convert(openkbp_patient_dir, out, "--overwrite").returncode == 0


def test_convert_command_broken_folders(openkbp_patient_dir, tmp_path):
    broken = tmp_path / "pt_1"
    shutil.copytree(openkbp_patient_dir, broken)
    with open(broken / "dose.csv", "a") as f:
        f.write("5,abc\n")
    n_lines = len((broken / "dose.csv").read_text().splitlines())
    out = tmp_path / "out"
    result = _convert(broken, out)
    assert result.returncode != 0
    errors = _error_lines(result)
    assert len(errors) == 1, result.stderr
    assert f"dose.csv: line {n_lines}:" in errors[0] and "'abc'" in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())

    (broken / "ct.csv").unlink()
    result = _convert(broken, out)
    assert result.returncode != 0
    errors = _error_lines(result)
    assert len(errors) == 1 and "ct.csv" in errors[0] and "missing" in errors[0], result.stderr


# Synthetic folders: reading, writing, every validation error --------------------------------------


def test_synthetic_round_trip(tmp_path):
    patient = _write_folder(tmp_path / "pt_7")
    again = openkbp.read_patient(tmp_path / "pt_7", shape=SMALL)
    assert again.patient_id == "pt_7"
    _assert_same_patient(patient, again)


def test_dose_is_optional_and_rois_are_what_is_present(tmp_path):
    folder = tmp_path / "pt_3"
    _write_folder(folder, with_dose=False)
    (folder / "SpinalCord.csv").unlink()
    patient = openkbp.read_patient(folder, shape=SMALL)
    assert patient.dose_gy is None
    assert set(patient.structures) == {"PTV70", "Brainstem"}


def test_header_only_files_are_empty_volumes(tmp_path):
    folder = tmp_path / "pt_1"
    _write_folder(folder)
    for name in ("PTV70.csv", "possible_dose_mask.csv", "dose.csv", "ct.csv"):
        (folder / name).write_text(",data\n")
    patient = openkbp.read_patient(folder, shape=SMALL)
    assert not patient.structures["PTV70"].any() and not patient.possible_dose_mask.any()
    assert not patient.dose_gy.any() and not patient.ct.any()


def test_windows_line_endings_are_read(tmp_path):
    path = tmp_path / "dose.csv"
    path.write_bytes(b",data\r\n3,1.5\r\n10,2.25\r\n")
    dose = openkbp.read_sparse_dose(path, shape=SMALL)
    assert dose.flat[3] == np.float32(1.5) and dose.flat[10] == np.float32(2.25) and dose.sum() == 3.75


def test_unknown_files_are_ignored_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "pt_1"
    patient = _write_folder(folder)
    (folder / "notes.txt").write_text("hello")
    (folder / "Parotid_L.csv").write_text(",data\n1,\n")
    with caplog.at_level(logging.WARNING, logger="MambaDoseLib.openkbp"):
        again = openkbp.read_patient(folder, shape=SMALL)
    assert "notes.txt" in caplog.text and "Parotid_L.csv" in caplog.text
    _assert_same_patient(patient, again)


@pytest.mark.parametrize("name", ["ct.csv", "possible_dose_mask.csv", "voxel_dimensions.csv"])
def test_missing_required_file(tmp_path, name):
    folder = tmp_path / "pt_1"
    _write_folder(folder)
    (folder / name).unlink()
    with pytest.raises(InputError, match=rf"{name}: required file missing"):
        openkbp.read_patient(folder, shape=SMALL)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="pt_9: patient folder does not exist"):
        openkbp.read_patient(tmp_path / "pt_9")


# (file, text written into it, expected message after "<path>: ")
ROW_ERRORS = [
    ("ct.csv", "data\n1,2\n", r"line 1: bad header 'data', expected ',data'"),
    ("ct.csv", "", r"empty file, expected the header ',data'"),
    ("PTV70.csv", ",Data\n1,\n", r"line 1: bad header ',Data'"),
    ("dose.csv", ",data\n1,2.5\nx,3\n", r"line 3: index 'x' is not a non-negative integer"),
    ("dose.csv", ",data\n1.5,2\n", r"line 2: index '1.5' is not a non-negative integer"),
    ("dose.csv", ",data\n1,2\n4,3\n-4,3\n", r"line 4: index -4 out of range \[0, 336\)"),
    ("dose.csv", ",data\n1,2\n336,3\n", r"line 3: index 336 out of range \[0, 336\)"),
    ("possible_dose_mask.csv", ",data\n1,\n2,\n99999999999999999999999,\n", r"line 4: index 9+ out of range"),
    ("dose.csv", ",data\n1,2\n4,3\n1,3\n", r"line 4: duplicate index 1 \(first at line 2\)"),
    ("Brainstem.csv", ",data\n5,\n6,\n5,\n", r"line 4: duplicate index 5 \(first at line 2\)"),
    ("ct.csv", ",data\n1,1000\n2,abc\n", r"line 3: value 'abc' is not a number"),
    ("ct.csv", ",data\n1,1000\n2,1.2.3\n", r"line 3: value '1.2.3' is not a number"),
    ("ct.csv", ",data\n1,1000\n2,NaN\n", r"line 3: value 'NaN' is NaN"),
    ("dose.csv", ",data\n1,inf\n", r"line 2: value 'inf' is infinite"),
    ("dose.csv", ",data\n1,-Infinity\n", r"line 2: value '-Infinity' is infinite"),
    ("dose.csv", ",data\n1,1e39\n", r"line 2: value 1e39 is infinite as float32"),
    ("dose.csv", ",data\n1,2\n2,-0.5\n", r"line 3: negative dose -0.5 Gy"),
    ("dose.csv", ",data\n1,2\n2,\n", r"line 3: missing value"),
    ("dose.csv", ",data\n1,2\n\n3,4\n", r"line 3: empty line"),
    ("dose.csv", ",data\n1,2,3\n", r"line 2: expected 2 comma-separated fields 'index,value', found 3"),
    ("ct.csv", ",data\n7\n", r"line 2: expected 2 comma-separated fields 'index,value', found 1"),
    ("PTV70.csv", ",data\n1,\n2,1\n", r"line 3: mask row has a value '1' \(expected 'index,'\)"),
    ("possible_dose_mask.csv", ",data\n1,\n2,nan\n", r"line 3: mask row has a value 'nan'"),
    ("voxel_dimensions.csv", "3.906\n3.906\n", r"expected exactly 3 voxel sizes \(mm\), found 2"),
    ("voxel_dimensions.csv", "3.906\n3.906\n2.5\n1\n", r"expected exactly 3 voxel sizes \(mm\), found 4"),
    ("voxel_dimensions.csv", "3.906\n0\n2.5\n", r"line 2: voxel size 0 mm is not positive and finite"),
    ("voxel_dimensions.csv", "3.906\n3.906\n-2.5\n", r"line 3: voxel size -2.5 mm is not positive"),
    ("voxel_dimensions.csv", "3.906\nnan\n2.5\n", r"line 2: voxel size nan mm is not positive"),
    ("voxel_dimensions.csv", "3.906\n3.9x\n2.5\n", r"line 2: voxel size '3.9x' is not a number"),
]


@pytest.mark.parametrize(("name", "text", "message"), ROW_ERRORS)
def test_validation_errors_name_file_and_line(tmp_path, name, text, message):
    folder = tmp_path / "pt_1"
    _write_folder(folder)
    (folder / name).write_text(text)
    with pytest.raises(InputError) as info:
        openkbp.read_patient(folder, shape=SMALL)
    text_of_error = str(info.value)
    assert "\n" not in text_of_error
    assert text_of_error.startswith(f"{folder / name}: "), text_of_error
    assert re.search(message, text_of_error), text_of_error


def test_random_bytes_give_input_error(tmp_path):
    folder = tmp_path / "pt_1"
    _write_folder(folder)
    (folder / "dose.csv").write_bytes(b",data\n1,2\n\x00\xff\xfe,3\n")
    with pytest.raises(InputError, match=r"dose\.csv: line 3: index"):
        openkbp.read_patient(folder, shape=SMALL)
    (folder / "dose.csv").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"dose\.csv: line 1: bad header"):
        openkbp.read_patient(folder, shape=SMALL)


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "pt_1"
    _write_folder(folder)
    (folder / "ct.csv").unlink()
    (folder / "ct.csv").mkdir()
    with pytest.raises(InputError, match=r"ct\.csv: is a folder"):
        openkbp.read_patient(folder, shape=SMALL)


# Writing ------------------------------------------------------------------------------------------


def test_write_sparse_dose_format_and_atomicity(tmp_path):
    dose = np.zeros(SMALL, np.float32)
    dose.flat[[4, 9, 30]] = [1.25, 70.123, 0.001]
    dose.flat[5] = -3.0  # not > 0: not written
    path = tmp_path / "pt_3.csv"
    openkbp.write_sparse_dose(path, dose)
    assert path.read_text() == ",data\n4,1.25\n9,70.123\n30,0.001\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pt_3.csv"]  # no temporary file left
    assert np.array_equal(openkbp.read_sparse_dose(path, SMALL), np.where(dose > 0, dose, 0))

    with pytest.raises(ValueError):
        openkbp.write_sparse_dose(path, np.full(SMALL, np.nan, np.float32))
    assert path.read_text() == ",data\n4,1.25\n9,70.123\n30,0.001\n"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["pt_3.csv"]


def test_write_patient_refuses_existing_files(tmp_path):
    folder = tmp_path / "pt_1"
    patient = _write_folder(folder)
    with pytest.raises(InputError, match="already holds"):
        openkbp.write_patient(patient, folder)
    openkbp.write_patient(patient, folder, overwrite=True)


def test_list_patient_dirs_sorted_by_number(tmp_path):
    for name in ("pt_10", "pt_2", "pt_1", "pt_x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "pt_3").write_text("a file, not a folder")
    assert [p.name for p in openkbp.list_patient_dirs(tmp_path)] == ["pt_1", "pt_2", "pt_10"]
    with pytest.raises(InputError, match="not a folder"):
        openkbp.list_patient_dirs(tmp_path / "missing")


# NIfTI ---------------------------------------------------------------------------------------------


def test_nifti_round_trip_synthetic(tmp_path):
    patient = _synthetic_patient(3)
    patient.spacing_mm = (4.6875, 4.6875, 3.0)
    paths = volume_io.write_patient_nifti(patient, tmp_path / "out")
    assert [p.name for p in paths] == volume_io.patient_nifti_names(patient)
    for path in paths:
        assert path.stat().st_mode & 0o044, "written files are readable by others (umask permitting)"
    ct, spacing = volume_io.read_nifti_array(tmp_path / "out" / "ct.nii.gz")
    assert np.array_equal(ct, patient.ct) and spacing == (4.6875, 4.6875, 3.0)
    image = nib.load(tmp_path / "out" / "PTV70.nii.gz")
    assert image.shape == SMALL
    assert np.array_equal(image.get_fdata() > 0, patient.structures["PTV70"])


def test_nifti_refuses_existing_output_and_writes_nothing(tmp_path):
    patient = _synthetic_patient(4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "PTV70.nii.gz").write_bytes(b"keep me")
    with pytest.raises(InputError, match=r"already holds PTV70\.nii\.gz; pass --overwrite"):
        volume_io.write_patient_nifti(patient, out)
    assert [p.name for p in out.iterdir()] == ["PTV70.nii.gz"]
    assert (out / "PTV70.nii.gz").read_bytes() == b"keep me"
    volume_io.write_patient_nifti(patient, out, overwrite=True)
    mask, _ = volume_io.read_nifti_array(out / "PTV70.nii.gz")
    assert np.array_equal(mask.astype(bool), patient.structures["PTV70"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_read_nifti_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        volume_io.read_nifti_array(tmp_path / "none.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read"):
        volume_io.read_nifti_array(tmp_path / "bad.nii.gz")
