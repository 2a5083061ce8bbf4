"""A synthetic head-and-neck patient for tests and demos (no real data needed).

The anatomy is defined in millimetres in a patient frame centred on the phantom, along the array
axes of the OpenKBP layout (``patient.OPENKBP_DIRECTION``)::

    a: axis 0, anterior (-) -> posterior (+)
    b: axis 1, patient right (-) -> left (+)
    c: axis 2, superior (-) -> inferior (+)

A voxel ``(i, j, k)`` of a grid with shape ``N`` and spacing ``s`` sits at
``(a, b, c) = ((i - (N0 - 1) / 2) * s0, (j - (N1 - 1) / 2) * s1, (k - (N2 - 1) / 2) * s2)``, and the
Patient's ``origin_mm`` is set so that this frame's centre is the physical point (0, 0, 0). Two
phantoms with the same seed but different shapes / spacings therefore describe the same physical
anatomy (up to voxelisation). The default grid (128 x 128 x 128 at 3.906 x 3.906 x 2.5 mm) spans
500 x 500 x 320 mm; the anatomy spans about 360 x 200 x 300 mm (shoulders included).

Structures: a body (head, neck, shoulders) with skull, mandible, vertebrae, airway and lungs in
the CT; the 7 OARs of ``rois.OAR_NAMES`` in their usual places; PTV70 (primary tumour, right of
the midline), PTV63 (right upper neck, overlapping PTV70) and PTV56 (both lower necks). The dose
is ``max over PTVs of Rx * f(d)`` with ``d`` the distance (mm) outside the PTV and
``f(d) = 1.02 * (0.8 exp(-d / 10 mm) + 0.2 exp(-d / 50 mm))``, 0 outside the body.
``seed`` moves and scales the internal structures a little (a few mm, +-10 %).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .patient import OPENKBP_DIRECTION, Patient
from .rois import PRESCRIPTION_GY

#: Offset-CT numbers (HU + 1024) of the phantom's tissues; 0 outside the body (no CT data).
CT_NUMBERS: dict[str, float] = {
    "soft_tissue": 1040.0,
    "parotid": 1000.0,
    "nerve": 1060.0,
    "air": 24.0,
    "lung": 250.0,
    "bone": 1700.0,
    "cortical_bone": 2000.0,
}

# Body outline per axial level c (mm): (centre a, semi-axis a, semi-axis b) interpolated in c.
_BODY_KNOTS_C = np.array([-100.0, -20.0, 10.0, 70.0, 100.0, 160.0])
_BODY_CENTRE_A = np.array([0.0, 0.0, 10.0, 10.0, 15.0, 15.0])
_BODY_SEMI_A = np.array([95.0, 95.0, 65.0, 65.0, 100.0, 105.0])
_BODY_SEMI_B = np.array([78.0, 78.0, 60.0, 62.0, 170.0, 180.0])
_HEAD_TOP_C = -145.0  # the skull's vertex; the head is rounded between here and c = -100
_BODY_BOTTOM_C = 150.0


class _Frame:
    """Voxel-centre coordinates (mm) of a grid, broadcastable to (I, J, K)."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]):
        self.shape = shape
        self.spacing_mm = spacing_mm
        self.a, self.b, self.c = (
            ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)).reshape(
                [n if axis == ax else 1 for axis in range(3)]
            )
            for ax, (n, s) in enumerate(zip(shape, spacing_mm, strict=True))
        )

    def ellipsoid(self, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
        """bool (I, J, K): inside the axis-aligned ellipsoid (mm)."""
        return (
            ((self.a - centre[0]) / semi[0]) ** 2
            + ((self.b - centre[1]) / semi[1]) ** 2
            + ((self.c - centre[2]) / semi[2]) ** 2
        ) <= 1.0

    def cylinder(
        self, centre_ab: tuple[float, float], radius: float, c_range: tuple[float, float]
    ) -> np.ndarray:
        """bool (I, J, K): inside the axial (along c) cylinder of ``radius`` mm between ``c_range``."""
        disc = (self.a - centre_ab[0]) ** 2 + (self.b - centre_ab[1]) ** 2 <= radius**2
        return disc & ((self.c >= c_range[0]) & (self.c <= c_range[1]))


def _body(frame: _Frame, shrink_mm: float = 0.0) -> np.ndarray:
    """bool (I, J, K): the body outline, optionally shrunk by ``shrink_mm`` (for the skull)."""
    c = frame.c.ravel()
    centre_a = np.interp(c, _BODY_KNOTS_C, _BODY_CENTRE_A).reshape(frame.c.shape)
    semi_a = np.interp(c, _BODY_KNOTS_C, _BODY_SEMI_A).reshape(frame.c.shape) - shrink_mm
    semi_b = np.interp(c, _BODY_KNOTS_C, _BODY_SEMI_B).reshape(frame.c.shape) - shrink_mm
    # round head top: the outline's scale falls from 1 at c = -100 to 0 at the vertex
    top = np.clip((c - (-100.0)) / (-100.0 - _HEAD_TOP_C), -1.0, 0.0)
    scale = np.sqrt(1.0 - top**2).reshape(frame.c.shape) - shrink_mm / 95.0
    inside = ((frame.a - centre_a) / semi_a) ** 2 + (frame.b / semi_b) ** 2 <= np.maximum(scale, 0.0) ** 2
    in_range = (frame.c > _HEAD_TOP_C + shrink_mm) & (frame.c <= _BODY_BOTTOM_C)
    return inside & in_range & (scale > 0)


def _jitter(
    rng: np.random.Generator, centre: tuple, semi: tuple, shift_mm: float = 3.0
) -> tuple[tuple, tuple]:
    """Shift a centre by up to +-shift_mm and scale semi-axes by 0.9..1.1 per axis."""
    new_centre = tuple(float(x + rng.uniform(-shift_mm, shift_mm)) for x in centre)
    new_semi = tuple(float(x * rng.uniform(0.9, 1.1)) for x in semi)
    return new_centre, new_semi


def _structures(frame: _Frame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The 10 ROI masks (bool, I, J, K) before clipping to the body."""
    e = frame.ellipsoid
    s: dict[str, np.ndarray] = {}
    s["Brainstem"] = e(*_jitter(rng, (35.0, 0.0, -60.0), (14.0, 14.0, 25.0), 2.0))
    cord_a = 52.0 + rng.uniform(-2.0, 2.0)
    s["SpinalCord"] = frame.cylinder((cord_a, 0.0), 5.0, (-35.0, 150.0))
    parotid_centre, parotid_semi = _jitter(rng, (5.0, 52.0, -30.0), (22.0, 13.0, 22.0))
    s["RightParotid"] = e((parotid_centre[0], -parotid_centre[1], parotid_centre[2]), parotid_semi)
    s["LeftParotid"] = e(parotid_centre, parotid_semi)
    s["Esophagus"] = frame.cylinder((10.0, 0.0), 6.0, (55.0, 150.0))
    s["Larynx"] = e(*_jitter(rng, (-35.0, 0.0, 40.0), (14.0, 16.0, 22.0), 2.0))
    s["Mandible"] = _mandible(frame)
    s["PTV70"] = e(*_jitter(rng, (-5.0, -15.0, 0.0), (22.0, 20.0, 25.0)))
    s["PTV63"] = e(*_jitter(rng, (0.0, -35.0, 25.0), (20.0, 18.0, 35.0)))
    nodes_centre, nodes_semi = _jitter(rng, (5.0, 40.0, 55.0), (18.0, 16.0, 45.0))
    s["PTV56"] = e(nodes_centre, nodes_semi) | e(
        (nodes_centre[0], -nodes_centre[1], nodes_centre[2]), nodes_semi
    )
    return s


def _mandible(frame: _Frame) -> np.ndarray:
    """bool (I, J, K): a U-shaped bone band 8 mm thick, opening posteriorly, c in [-40, -10] mm."""
    radius = np.sqrt((frame.a + 25.0) ** 2 + frame.b**2)
    band = (radius >= 40.0) & (radius <= 48.0) & (frame.a <= -15.0)
    return band & (frame.c >= -40.0) & (frame.c <= -10.0)


def _airway(frame: _Frame) -> np.ndarray:
    """bool (I, J, K): pharynx / larynx / trachea lumen, radius 5 mm, c in [-20, 150] mm."""
    centre_a = np.interp(frame.c.ravel(), [-20.0, 20.0, 150.0], [-10.0, -30.0, -30.0]).reshape(frame.c.shape)
    lumen = (frame.a - centre_a) ** 2 + frame.b**2 <= 5.0**2
    return lumen & (frame.c >= -20.0) & (frame.c <= 150.0)


def _ct(
    frame: _Frame, body: np.ndarray, structures: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """float32 (I, J, K) offset CT numbers: tissues by region, N(0, 8) noise inside the body."""
    ct = np.where(body, np.float32(CT_NUMBERS["soft_tissue"]), np.float32(0.0)).astype(np.float32)
    skull = body & ~_body(frame, shrink_mm=7.0) & (frame.c < -45.0)
    vertebral_body = frame.cylinder((32.0, 0.0), 12.0, (-40.0, 150.0))
    arch = frame.cylinder((52.0, 0.0), 15.0, (-40.0, 150.0)) & ~frame.cylinder(
        (52.0, 0.0), 8.0, (-40.0, 150.0)
    )
    lungs = frame.ellipsoid((10.0, 70.0, 170.0), (45.0, 40.0, 60.0)) | frame.ellipsoid(
        (10.0, -70.0, 170.0), (45.0, 40.0, 60.0)
    )
    regions = [
        (lungs, "lung"),
        (structures["RightParotid"] | structures["LeftParotid"], "parotid"),
        (structures["Brainstem"] | structures["SpinalCord"], "nerve"),
        (vertebral_body | arch, "bone"),
        (skull | structures["Mandible"], "cortical_bone"),
        (_airway(frame), "air"),
    ]
    for region, tissue in regions:
        ct[region & body] = CT_NUMBERS[tissue]
    noise = rng.normal(0.0, 8.0, size=frame.shape).astype(np.float32)
    ct[body] = np.maximum(ct[body] + noise[body], 1.0)
    return ct


def _dose(
    structures: dict[str, np.ndarray], body: np.ndarray, spacing_mm: tuple[float, float, float]
) -> np.ndarray:
    """float32 (I, J, K) Gy: ``max_t Rx_t * f(d_t)`` inside the body (module doc), 0 outside."""
    dose = np.zeros(body.shape, dtype=np.float32)
    for name, rx in PRESCRIPTION_GY.items():
        mask = structures.get(name)
        if mask is None or not mask.any():
            continue
        d = ndimage.distance_transform_edt(~mask, sampling=spacing_mm).astype(np.float32)
        level = np.float32(1.02) * (0.8 * np.exp(-d / 10.0) + 0.2 * np.exp(-d / 50.0))
        np.maximum(dose, np.float32(rx) * level, out=dose)
    dose[~body] = 0.0
    return dose


def phantom_origin_mm(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Physical (LPS) position of voxel (0, 0, 0) that puts the phantom's centre at (0, 0, 0) mm."""
    offset = -(np.asarray(shape, dtype=float) - 1.0) / 2.0 * np.asarray(spacing_mm, dtype=float)
    return tuple(float(x) for x in OPENKBP_DIRECTION @ offset)


def make_phantom(
    shape: tuple[int, int, int] = (128, 128, 128),
    spacing_mm: tuple[float, float, float] = (3.906, 3.906, 2.5),
    seed: int = 0,
    with_dose: bool = True,
    patient_id: str = "phantom",
) -> Patient:
    """A synthetic head-and-neck ``Patient`` in the OpenKBP layout (module doc for the anatomy).

    shape: voxels along axes 0, 1, 2; spacing_mm: voxel size (mm) along them. Every ROI that
    the grid sees is contoured (clipped to the body; all 10 on the default grid, a small grid
    leaves out those outside it); ``possible_dose_mask`` is the body; ``dose_gy`` is None unless
    ``with_dose``.
    """
    shape = tuple(int(n) for n in shape)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    frame = _Frame(shape, spacing_mm)
    rng = np.random.default_rng(seed)
    body = _body(frame)
    structures = {name: mask & body for name, mask in _structures(frame, rng).items()}
    ct = _ct(frame, body, structures, rng)
    structures = {name: mask for name, mask in structures.items() if mask.any()}
    dose = _dose(structures, body, spacing_mm) if with_dose else None
    return Patient(
        patient_id=patient_id,
        ct=ct,
        spacing_mm=spacing_mm,
        possible_dose_mask=body,
        structures=structures,
        dose_gy=dose,
        origin_mm=phantom_origin_mm(shape, spacing_mm),
        direction=OPENKBP_DIRECTION.copy(),
    )


def make_phantom_folder(
    out_dir: str | os.PathLike,
    spacing_mm: tuple[float, float, float] = (3.906, 3.906, 2.5),
    seed: int = 0,
    with_dose: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a 128^3 phantom (``make_phantom``) as the OpenKBP patient folder ``out_dir``
    (e.g. ``split/pt_1``; its name becomes the patient id) with ``openkbp.write_patient``
    (atomic files; InputError when the folder already holds patient files, unless ``overwrite``).
    Returns the folder."""
    from .openkbp import write_patient

    out = Path(out_dir)
    patient = make_phantom((128, 128, 128), spacing_mm, seed=seed, with_dose=with_dose, patient_id=out.name)
    write_patient(patient, out, overwrite=overwrite)
    return out
