"""Report files: CSV, JSON, NIfTI, PNG figures; each says research prediction; writes are atomic."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from MambaDoseLib import RESEARCH_DISCLAIMER
from MambaDoseLib.geometry import Volume
from MambaDoseLib.metrics import ROI_METRIC_NAMES, dvh_curve, roi_metrics
from MambaDoseLib.patient import OPENKBP_DIRECTION
from MambaDoseLib.report import (
    CSV_COLUMNS,
    NIFTI_DESCRIPTION,
    atomic_write,
    largest_section,
    metrics_csv_text,
    plot_dvh,
    plot_isodose_views,
    write_dose_nifti,
    write_metrics_csv,
    write_summary_json,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scene(direction=None):
    """A 40x48x30 CT with a spherical PTV and a dose falling off from its centre."""
    k, j, i = np.meshgrid(np.arange(30), np.arange(48), np.arange(40), indexing="ij")
    r = np.sqrt(((i - 20) * 2.0) ** 2 + ((j - 24) * 2.0) ** 2 + ((k - 15) * 3.0) ** 2)
    ct = np.where(r < 40, 30.0, -1000.0).astype(np.float32)
    ptv = r <= 12
    dose = np.clip(72.0 - 1.2 * np.maximum(r - 10, 0), 0, None).astype(np.float32)
    direction = np.eye(3) if direction is None else direction
    geo = dict(spacing=(2.0, 2.0, 3.0), origin=(-40.0, -48.0, 10.0), direction=direction)
    return Volume(ct, **geo), Volume(dose, **geo), Volume(ptv, **geo)


def test_metrics_csv_has_disclaimer_and_values(tmp_path):
    _, dose, ptv = _scene()
    row = {"structure": "PTV_70", "model_roi": "PTV70", "kind": "target", "prescription_gy": 70.0}
    row |= roi_metrics(dose.array, ptv.array, dose.voxel_volume_mm3, 70.0)
    empty = {"structure": "Cord", "model_roi": "SpinalCord", "kind": "oar", "prescription_gy": math.nan}
    empty |= roi_metrics(dose.array, np.zeros_like(ptv.array), dose.voxel_volume_mm3)
    path = write_metrics_csv(tmp_path / "m.csv", [row, empty])
    text = path.read_text()
    assert text.startswith("# " + RESEARCH_DISCLAIMER)
    table = pd.read_csv(path, comment="#")
    assert tuple(table.columns) == CSV_COLUMNS
    for name in ROI_METRIC_NAMES:
        assert table.loc[0, name] == pytest.approx(row[name], abs=1e-4), name
    assert table.loc[1, "volume_cc"] == 0.0
    assert math.isnan(table.loc[1, "Dmean"])
    assert math.isnan(table.loc[1, "prescription_gy"])


def test_csv_text_order_and_empty_cells():
    text = metrics_csv_text([{"structure": "X", "Dmean": 1.23456}])
    lines = text.splitlines()
    assert lines[1] == ",".join(CSV_COLUMNS)
    assert lines[2].split(",")[CSV_COLUMNS.index("Dmean")] == "1.2346"
    assert lines[2].split(",")[CSV_COLUMNS.index("D95")] == ""


def test_summary_json(tmp_path):
    path = write_summary_json(
        tmp_path / "s.json", {"a": math.nan, "b": np.float32(2.5), "c": (1, 2), "d": tmp_path}
    )
    data = json.loads(path.read_text())
    assert next(iter(data)) == "disclaimer"
    assert data["disclaimer"] == RESEARCH_DISCLAIMER
    assert data["a"] is None and data["b"] == 2.5 and data["c"] == [1, 2] and data["d"] == str(tmp_path)


def test_dose_nifti_geometry_and_description(tmp_path):
    _, dose, _ = _scene(direction=OPENKBP_DIRECTION)
    path = write_dose_nifti(tmp_path / "dose.nii.gz", dose)
    image = nib.load(path)
    assert image.header["descrip"].tobytes().rstrip(b"\0").decode() == NIFTI_DESCRIPTION
    assert "research" in NIFTI_DESCRIPTION and len(NIFTI_DESCRIPTION) < 80
    import SimpleITK as sitk

    back = Volume.from_sitk(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(back.array, dose.array)
    np.testing.assert_allclose(back.direction, dose.direction, atol=1e-6)
    assert back.origin == pytest.approx(dose.origin, abs=1e-4)
    assert back.spacing == pytest.approx(dose.spacing, abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dose.nii.gz"]  # no temporary left


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


@pytest.mark.parametrize("direction", [np.eye(3), OPENKBP_DIRECTION])
def test_isodose_views_and_dvh_png(tmp_path, direction):
    ct, dose, ptv = _scene(direction)
    paths = {v: tmp_path / f"iso_{v}.png" for v in ("axial", "coronal", "sagittal")}
    written = plot_isodose_views(paths, ct, dose, ptv, 70.0, target_name="PTV_70")
    assert written == list(paths.values())
    curves = {"PTV_70": dvh_curve(dose.array, ptv.array), "Ring": dvh_curve(dose.array, ~ptv.array)}
    written.append(plot_dvh(tmp_path / "dvh.png", curves, targets=("PTV_70",)))
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 10_000


def test_largest_section():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:5, 3:9, 4:6] = True
    mask[7, 3:11, 1:13] = True  # the largest axial section
    z, y, x = largest_section(mask)
    assert z == 7
    assert 3 <= y <= 8 and 4 <= x <= 5
