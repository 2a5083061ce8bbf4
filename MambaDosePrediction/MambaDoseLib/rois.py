"""The ROI table of the OpenKBP head-and-neck benchmark: the one place that names structures.

Every other module asks this table for names, roles and prescriptions; nothing else spells an
ROI name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Roi:
    """One structure of the benchmark.

    name: the OpenKBP file stem (``PTV70`` for ``PTV70.csv``).
    kind: ``"target"`` (a PTV) or ``"oar"`` (an organ at risk).
    prescription_gy: the dose prescribed to a target, in Gy; ``None`` for an OAR.
    """

    name: str
    kind: Literal["target", "oar"]
    prescription_gy: float | None = None


ROIS: tuple[Roi, ...] = (
    Roi("Brainstem", "oar"),
    Roi("SpinalCord", "oar"),
    Roi("RightParotid", "oar"),
    Roi("LeftParotid", "oar"),
    Roi("Esophagus", "oar"),
    Roi("Larynx", "oar"),
    Roi("Mandible", "oar"),
    Roi("PTV56", "target", 56.0),
    Roi("PTV63", "target", 63.0),
    Roi("PTV70", "target", 70.0),
)

ROI_NAMES: tuple[str, ...] = tuple(r.name for r in ROIS)
OAR_NAMES: tuple[str, ...] = tuple(r.name for r in ROIS if r.kind == "oar")
TARGET_NAMES: tuple[str, ...] = tuple(r.name for r in ROIS if r.kind == "target")
PRESCRIPTION_GY: dict[str, float] = {r.name: r.prescription_gy for r in ROIS if r.prescription_gy}
ROI_BY_NAME: dict[str, Roi] = {r.name: r for r in ROIS}

#: The highest prescription of the benchmark; dose levels (isodoses, PSDM weights) refer to it.
MAX_PRESCRIPTION_GY: float = max(PRESCRIPTION_GY.values())


def is_target(name: str) -> bool:
    """True for a PTV of the table."""
    return ROI_BY_NAME[name].kind == "target"
