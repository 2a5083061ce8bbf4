"""The compact patient cache: round trip, quantisation bounds, index, errors, `mambadose preprocess`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from MambaDoseLib.errors import InputError
from MambaDoseLib.phantom import make_phantom, make_phantom_folder
from MambaDoseTrainingLib import cache as C


def assert_round_trip(back, ref) -> None:
    """Masks and spacing exact; CT within 5 (<= 2550); dose within 0.005 Gy (+ float32 rounding)."""
    assert back.shape == ref.shape and back.spacing_mm == ref.spacing_mm
    np.testing.assert_array_equal(back.possible_dose_mask, ref.possible_dose_mask)
    assert back.structures.keys() == ref.structures.keys()
    for name, mask in ref.structures.items():
        np.testing.assert_array_equal(back.structures[name], mask, err_msg=name)
    in_range = ref.ct <= C.CT_MAX
    assert np.abs(back.ct - ref.ct)[in_range].max() <= 5.0
    assert np.all(back.ct[~in_range] == C.CT_MAX)
    assert np.all(back.ct % 10 == 0)
    if ref.dose_gy is None:
        assert back.dose_gy is None
    else:
        assert back.dose_gy.dtype == np.float32
        assert np.abs(back.dose_gy - ref.dose_gy).max() <= 0.005 + 1e-5


def test_encode_decode_phantom():
    ref = make_phantom((64, 48, 40), seed=4)
    ref.ct[10, 10, 10] = 3000.0  # above the CT range: stored as 2550
    ref.dose_gy[ref.possible_dose_mask] += 0.004999  # values just below a rounding boundary
    back = C.decode_patient(C.encode_patient(ref), "x")
    assert back.patient_id == "x"
    assert_round_trip(back, ref)


def test_encode_decode_extremes_and_missing_dose():
    rng = np.random.default_rng(0)
    shape = (7, 9, 11)
    ct = rng.uniform(0, 4000, shape).astype(np.float32)
    dose = rng.uniform(0, 655.3, shape).astype(np.float32)  # noisy, up to the uint16 limit
    mask = rng.random(shape) > 0.5
    from MambaDoseLib.patient import Patient

    ref = Patient("p", ct, (1.1, 2.2, 3.3), mask, {"Larynx": ~mask, "PTV63": mask}, dose)
    assert_round_trip(C.decode_patient(C.encode_patient(ref), "p"), ref)
    ref.dose_gy = None
    assert_round_trip(C.decode_patient(C.encode_patient(ref), "p"), ref)
    ref.dose_gy = np.full(shape, 700.0, np.float32)
    with pytest.raises(ValueError, match="655"):
        C.encode_patient(ref)


def test_validate_rejects_bad_patients():
    p = make_phantom((16, 16, 8), with_dose=True)
    p.dose_gy[0, 0, 0] = -1.0
    with pytest.raises(InputError, match="pt_x: dose"):
        C.validate_patient(p, "pt_x")
    p.dose_gy = None
    with pytest.raises(InputError, match="no dose"):
        C.validate_patient(p, "pt_x", require_dose=True)
    p.possible_dose_mask = p.possible_dose_mask[:, :, :4]
    with pytest.raises(InputError, match="shape"):
        C.validate_patient(p, "pt_x")


@pytest.fixture(scope="module")
def phantom_split(tmp_path_factory):
    """An OpenKBP split of 2 phantom patients: pt_1 at the default spacing, pt_2 at 3 x 3 x 2 mm."""
    split = tmp_path_factory.mktemp("split")
    make_phantom_folder(split / "pt_1", seed=1)
    make_phantom_folder(split / "pt_2", spacing_mm=(3.0, 3.0, 2.0), seed=2)
    return split


def test_preprocess_cli_on_phantom_split(phantom_split, tmp_path):
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "MambaDoseLib.cli",
        "preprocess",
        str(phantom_split),
        str(out),
        "--workers",
        "2",
    ]
    result = subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cached 2 patients" in result.stdout
    assert C.list_cached(out) == ["pt_1", "pt_2"]
    index = json.loads((out / "index.json").read_text())
    assert index["format_version"] == C.FORMAT_VERSION and index["quantisation"]["ct"]["step"] == 10
    assert index["patients"][1]["spacing_mm"] == [3.0, 3.0, 2.0]
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "pt_1.npz.xz", "pt_2.npz.xz"]
    from MambaDoseLib.openkbp import read_patient

    for pid, back in zip(["pt_1", "pt_2"], C.load_all(out), strict=True):
        assert back.patient_id == pid
        assert_round_trip(back, read_patient(phantom_split / pid))


def test_build_cache_in_process_and_errors(phantom_split, tmp_path):
    summary = C.build_cache(phantom_split, tmp_path / "c", progress=False, workers=1, require_dose=True)
    assert summary["patients"] == 2 and summary["bytes"] > 0 and not summary["warnings"]
    assert C.list_cached(tmp_path / "c") == ["pt_1", "pt_2"]
    with pytest.raises(InputError, match="not in the cache"):
        C.load_patient(tmp_path / "c", "pt_9")
    C.patient_file(tmp_path / "c", "pt_2").write_bytes(b"not xz")
    with pytest.raises(InputError, match="corrupted"):
        C.load_patient(tmp_path / "c", "pt_2")
    with pytest.raises(InputError, match="index.json: missing"):
        C.list_cached(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no pt_<N>"):
        C.build_cache(tmp_path / "empty", tmp_path / "c2", progress=False)


def test_preprocess_cli_bad_input(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "MambaDoseLib.cli",
        "preprocess",
        str(tmp_path / "nope"),
        str(tmp_path / "c"),
    ]
    result = subprocess.run(cmd, capture_output=True, encoding="utf-8", timeout=120)
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.openkbp
def test_round_trip_real_patient(openkbp_patient_dir):
    from MambaDoseLib.openkbp import read_patient

    ref = read_patient(openkbp_patient_dir)
    data = C.encode_patient(ref)
    assert len(data) < 600_000  # the whole 202-patient cache must stay near 50 MB
    assert_round_trip(C.decode_patient(data, ref.patient_id), ref)


def test_combine_caches_subsets_in_order_and_refusals(phantom_split, tmp_path):
    C.build_cache(phantom_split, tmp_path / "a", progress=False)
    make_phantom_folder(tmp_path / "split_b" / "pt_7", seed=7)
    C.build_cache(tmp_path / "split_b", tmp_path / "b", progress=False)
    summary = C.combine_caches([(tmp_path / "b", None), (tmp_path / "a", ["pt_2"])], tmp_path / "ab")
    assert summary["patients"] == 2 and len(summary["sources"]) == 2
    assert C.list_cached(tmp_path / "ab") == ["pt_7", "pt_2"]
    for pid, src in (("pt_7", "b"), ("pt_2", "a")):
        assert_round_trip(C.load_patient(tmp_path / "ab", pid), C.load_patient(tmp_path / src, pid))
    assert sorted(p.name for p in (tmp_path / "ab").iterdir()) == ["index.json", "pt_2.npz.xz", "pt_7.npz.xz"]
    assert (tmp_path / "ab" / "pt_2.npz.xz").stat().st_ino == (tmp_path / "a" / "pt_2.npz.xz").stat().st_ino
    again = C.combine_caches([(tmp_path / "ab", None)], tmp_path / "abc")  # a combined cache as a source
    assert again["sources"] == summary["sources"] and all(isinstance(s, str) for s in again["sources"])
    with pytest.raises(InputError, match="already exists"):  # nothing overwritten
        C.combine_caches([(tmp_path / "a", None)], tmp_path / "ab")
    with pytest.raises(InputError, match="no patient pt_9"):
        C.combine_caches([(tmp_path / "a", ["pt_9"])], tmp_path / "x1")
    with pytest.raises(InputError, match="pt_1 given twice"):
        C.combine_caches([(tmp_path / "a", None), (tmp_path / "a", ["pt_1"])], tmp_path / "x2")
    (tmp_path / "a" / "pt_1.npz.xz").rename(tmp_path / "a" / "moved")
    with pytest.raises(InputError, match="pt_1.npz.xz: listed in its cache's index but missing"):
        C.combine_caches([(tmp_path / "b", None), (tmp_path / "a", None)], tmp_path / "x4")
    assert not (tmp_path / "x4").exists()  # refused before anything was written
    index = json.loads((tmp_path / "b" / "index.json").read_text())
    index["quantisation"]["ct"]["step"] = 5.0
    (tmp_path / "b" / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="another quantisation"):
        C.combine_caches([(tmp_path / "b", None)], tmp_path / "x3")
    assert not (tmp_path / "x2" / "index.json").exists() and not (tmp_path / "x3" / "index.json").exists()
