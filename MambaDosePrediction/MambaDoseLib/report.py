"""Report files of a prediction: DVH metrics CSV, DVH curves PNG, isodose overlays PNG, JSON summary,
dose NIfTI. Every file says that the dose is a model prediction for research
(``MambaDoseLib.RESEARCH_DISCLAIMER``): a CSV comment line, a PNG title and footer, a JSON field, the
NIfTI description field.

Figures use matplotlib's object API (``Figure`` + Agg canvas): no pyplot, no global backend state.
Every write is atomic (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import RESEARCH_DISCLAIMER
from .geometry import Volume
from .metrics import ROI_METRIC_NAMES

#: NIfTI's description field holds 80 bytes: the short form of the disclaimer.
NIFTI_DESCRIPTION = "MambaDose research prediction, dose in Gy; not a treatment plan"

#: Isodose levels of the overlays, as fractions of the highest prescription.
ISODOSE_LEVELS: tuple[float, ...] = (1.07, 1.00, 0.95, 0.80, 0.50, 0.30)
_ISODOSE_COLOURS = ("#ff00ff", "#ff0000", "#ff8c00", "#ffff00", "#00c000", "#00bfff")

#: CT display window (HU): soft tissue, width 400 around level 40.
CT_WINDOW_HU: tuple[float, float] = (-160.0, 240.0)

#: Columns of the metrics CSV before the metric columns.
CSV_ID_COLUMNS: tuple[str, ...] = ("structure", "model_roi", "kind", "prescription_gy")
CSV_COLUMNS: tuple[str, ...] = CSV_ID_COLUMNS + ROI_METRIC_NAMES


# atomic writes --------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary path beside ``path`` (same suffixes), then rename it."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# NIfTI ---------------------------------------------------------------------------------------


def write_dose_nifti(path: Path, dose: Volume) -> Path:
    """Write the dose (Gy, float32) with its geometry; the NIfTI ``descrip`` says research only."""
    image = dose.with_array(np.asarray(dose.array, np.float32), NIFTI_DESCRIPTION).to_sitk()
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


# CSV -----------------------------------------------------------------------------------------


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The metrics table as CSV text: a ``#`` comment line with the disclaimer, then the header.

    rows: one dict per structure with the keys of ``CSV_COLUMNS`` (missing or NaN -> empty cell).
    Doses in Gy, volume_cc in cm^3, V95 in % of the structure, HI unitless; 4 decimals.
    Read it back with ``pandas.read_csv(path, comment="#")``.
    """
    buffer = io.StringIO()
    buffer.write(f"# {RESEARCH_DISCLAIMER} Doses in Gy, volume_cc in cm3, V95 in %.\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(row.get(col)) for col in CSV_COLUMNS])
    return buffer.getvalue()


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write :func:`metrics_csv_text` atomically."""
    return _write_text(path, metrics_csv_text(rows))


# JSON ----------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python, Paths -> str, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_summary_json(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write the summary with ``"disclaimer"`` as its first field (NaN written as null)."""
    data = {"disclaimer": RESEARCH_DISCLAIMER, **_json_safe(dict(summary))}
    return _write_text(path, json.dumps(data, indent=2) + "\n")


# figures --------------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.01, RESEARCH_DISCLAIMER, ha="center", va="bottom", fontsize=7, color="#b00000", wrap=True)
    return fig


def _save_png(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_dvh(
    path: Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    targets: Sequence[str] = (),
    title: str = "Predicted dose: cumulative DVH",
    prescription_gy: float | None = None,
) -> Path:
    """DVH curves (volume % vs dose Gy) of each structure; targets drawn thicker; a dotted line at
    ``prescription_gy`` (the highest prescription) when given. Writes a PNG."""
    fig = _new_figure(9.0, 6.0)
    ax = fig.add_axes((0.08, 0.12, 0.62, 0.78))
    colours = _colour_cycle(len(curves))
    max_dose = 1.0
    for (name, (dose_axis, volume_pct)), colour in zip(curves.items(), colours, strict=True):
        if not np.any(np.isfinite(volume_pct)):
            continue
        is_target = name in targets
        ax.plot(
            dose_axis,
            volume_pct,
            color=colour,
            lw=2.2 if is_target else 1.3,
            ls="-" if is_target else "--",
            label=name,
        )
        reached = dose_axis[volume_pct > 0]
        max_dose = max(max_dose, float(reached[-1]) if reached.size else 0.0)
    if prescription_gy:
        ax.axvline(prescription_gy, color="black", ls=":", lw=1.0, label=f"Rx {prescription_gy:g} Gy")
        max_dose = max(max_dose, prescription_gy)
    ax.set_xlim(0, max_dose * 1.08)
    ax.set_ylim(0, 102)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="Structure")
    ax.set_title(f"{title}\nmodel prediction for research, not a treatment plan", fontsize=10)
    return _save_png(fig, path)


def _colour_cycle(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _oriented(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Array (z, y, x) reoriented to the nearest LPS axes, its spacing (x, y, z) and origin."""
    image = sitk.DICOMOrient(volume.to_sitk(), "LPS")
    return sitk.GetArrayFromImage(image), np.array(image.GetSpacing()), np.array(image.GetOrigin())


def largest_section(mask_zyx: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) indices of the axial, coronal and sagittal slices with the most mask voxels."""
    return tuple(int(np.argmax(mask_zyx.sum(axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3))  # type: ignore[return-value]


def plot_isodose_views(
    paths: Mapping[str, Path],
    ct_hu: Volume,
    dose_gy: Volume,
    target_mask: Volume,
    prescription_gy: float,
    target_name: str = "PTV",
    levels: Sequence[float] = ISODOSE_LEVELS,
) -> list[Path]:
    """Isodose lines over the CT through the target's largest axial, coronal and sagittal sections.

    paths: view name (``"axial"``, ``"coronal"``, ``"sagittal"``) -> PNG path.
    ct_hu, dose_gy, target_mask: volumes on one grid. Levels are fractions of ``prescription_gy``.
    Views use the radiological convention: axial and coronal show the patient's right on the left,
    coronal and sagittal show superior at the top, sagittal anterior on the left.
    """
    ct, spacing, origin = _oriented(ct_hu)
    dose, _, _ = _oriented(dose_gy)
    target, _, _ = _oriented(target_mask.with_array(target_mask.array.astype(np.uint8)))
    iz, iy, ix = largest_section(target > 0)
    nz, ny, nx = ct.shape
    x0, y0, z0 = origin
    x = (x0 - spacing[0] / 2, x0 + (nx - 0.5) * spacing[0])
    y = (y0 - spacing[1] / 2, y0 + (ny - 0.5) * spacing[1])
    z = (z0 - spacing[2] / 2, z0 + (nz - 0.5) * spacing[2])
    views = {
        "axial": (
            ct[iz],
            dose[iz],
            target[iz],
            (x[0], x[1], y[1], y[0]),
            "upper",
            f"z = {z0 + iz * spacing[2]:.1f} mm",
            ("x R->L (mm)", "y A->P (mm)"),
        ),
        "coronal": (
            ct[:, iy],
            dose[:, iy],
            target[:, iy],
            (x[0], x[1], z[0], z[1]),
            "lower",
            f"y = {y0 + iy * spacing[1]:.1f} mm",
            ("x R->L (mm)", "z I->S (mm)"),
        ),
        "sagittal": (
            ct[:, :, ix],
            dose[:, :, ix],
            target[:, :, ix],
            (y[0], y[1], z[0], z[1]),
            "lower",
            f"x = {x0 + ix * spacing[0]:.1f} mm",
            ("y A->P (mm)", "z I->S (mm)"),
        ),
    }
    written = []
    for view, path in paths.items():
        ct2, dose2, target2, extent, origin_kw, where, labels = views[view]
        written.append(
            _plot_one_view(
                path,
                ct2,
                dose2,
                target2,
                extent,
                origin_kw,
                levels,
                prescription_gy,
                f"{view} ({where})",
                target_name,
                labels,
            )
        )
    return written


def _body_window(
    ct2: np.ndarray, extent, origin: str, margin_mm: float = 15.0
) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) limits in mm: the slice's body (CT > -500 HU) plus a margin, or the
    whole slice when no body is seen. ``extent`` and ``origin`` as given to ``imshow``."""
    rows, cols = np.nonzero(ct2 > -500)
    if rows.size == 0:
        return tuple(extent)
    left, right, bottom, top = extent
    col_mm = (right - left) / ct2.shape[1]
    x0 = max(left + cols.min() * col_mm - margin_mm, left)
    x1 = min(left + (cols.max() + 1) * col_mm + margin_mm, right)
    first_row = top if origin == "upper" else bottom  # where row 0 is drawn
    row_mm = ((bottom - top) if origin == "upper" else (top - bottom)) / ct2.shape[0]
    edges = sorted((first_row + rows.min() * row_mm, first_row + (rows.max() + 1) * row_mm))
    lo = max(edges[0] - margin_mm, min(bottom, top))
    hi = min(edges[1] + margin_mm, max(bottom, top))
    return (x0, x1, hi, lo) if origin == "upper" else (x0, x1, lo, hi)


def _plot_one_view(
    path, ct2, dose2, target2, extent, origin, levels, prescription_gy, where, target_name, labels
) -> Path:
    from matplotlib.lines import Line2D

    view = _body_window(ct2, extent, origin)
    width_mm, height_mm = abs(view[1] - view[0]), abs(view[3] - view[2])
    axes_w_in = 5.6
    axes_h_in = float(np.clip(axes_w_in * height_mm / max(width_mm, 1.0), 3.0, 9.0))
    fig = _new_figure(axes_w_in / 0.6, axes_h_in + 1.8)
    fig_h = axes_h_in + 1.8
    ax = fig.add_axes((0.1, 0.8 / fig_h, 0.6, axes_h_in / fig_h))
    ax.imshow(
        ct2,
        cmap="gray",
        vmin=CT_WINDOW_HU[0],
        vmax=CT_WINDOW_HU[1],
        extent=extent,
        origin=origin,
        interpolation="bilinear",
    )
    handles = []
    for fraction, colour in zip(levels, _ISODOSE_COLOURS, strict=False):
        level = fraction * prescription_gy
        if dose2.max() >= level:
            ax.contour(dose2, levels=[level], colors=[colour], linewidths=1.2, extent=extent, origin=origin)
        handles.append(Line2D([], [], color=colour, lw=1.5, label=f"{fraction * 100:.0f} % ({level:.1f} Gy)"))
    if target2.any():
        ax.contour(
            target2.astype(float),
            levels=[0.5],
            colors=["white"],
            linewidths=1.0,
            linestyles="dashed",
            extent=extent,
            origin=origin,
        )
        handles.append(Line2D([], [], color="white", lw=1.0, ls="--", label=target_name))
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(view[0], view[1])
    ax.set_ylim(view[2], view[3])
    ax.set_aspect("equal", adjustable="box")
    legend = ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        title=f"Isodose ({prescription_gy:g} Gy = 100 %)",
    )
    legend.get_frame().set_facecolor("#dddddd")
    ax.set_title(f"Predicted dose, {where}\nmodel prediction for research, not a treatment plan", fontsize=10)
    return _save_png(fig, path)
