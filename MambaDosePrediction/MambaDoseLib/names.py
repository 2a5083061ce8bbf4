"""Match a patient's structure names onto the model's ROIs (the table is in docs/name_matching.md).

The model knows the ROIs of ``rois.ROIS``. A clinic names them in many ways (``PTV_70``,
``ptv70``, ``PTV 70Gy``, ``Parotid_L``, ``L Parotid``, ``Cord``, ``Brain Stem``, ...). The rule:

1. Normalise: split CamelCase (``LeftParotid`` -> ``Left Parotid``, ``LParotid`` -> ``L Parotid``),
   lower-case, and treat runs of spaces, ``_``, ``-`` and ``.`` between words as one separator.
2. Targets: ``ptv`` followed by a dose, with an optional unit: ``PTV70``, ``PTV_70``, ``PTV 70Gy``,
   ``PTV_66.5``, ``PTV_7000`` (a number >= 1000 is read as cGy, a number with ``cGy`` too). A
   number below 20 (``PTV1``, ``PTV2``) is not a dose. ``--rx NAME=Gy`` names a structure a target
   with that prescription whatever its name (and overrides a dose read from the name).
   A target maps to the model PTV whose prescription is nearest (a tie goes to the higher one);
   its own prescription is kept for the DVH metrics (V95, HI) and the isodose levels.
3. Organs at risk: the remaining words, without a side word, looked up in ``ORGAN_SYNONYMS``; a
   side word (``l``, ``lt``, ``left`` / ``r``, ``rt``, ``right``, before or after) picks the side
   of a paired organ (sides are the patient's). A paired organ without a side, a side on an
   unpaired organ, or any extra word (``Brainstem_PRV``, ``Cord_3mm``, ``Parotids``) is unmatched.
4. Unmatched structures are listed with the reason and ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from . import rois
from .errors import InputError

#: words that give a side (patient's left / right)
SIDE_WORDS: dict[str, str] = {
    "l": "left",
    "lt": "left",
    "left": "left",
    "r": "right",
    "rt": "right",
    "right": "right",
}

#: normalised organ key (words joined, no side) -> further names that mean the same organ.
#: The keys are the model's ROI names, normalised (``SpinalCord`` -> ``spinalcord``,
#: ``LeftParotid`` -> side left + ``parotid``); ``_check_table`` verifies that at import.
ORGAN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "brainstem": ("brainstem", "bstem", "brain stem"),
    "spinalcord": ("spinalcord", "cord", "spinal cord", "spcord"),
    "parotid": ("parotid", "parotidgland", "parotid gland", "parotis"),
    "esophagus": ("esophagus", "oesophagus", "esophag", "oesophag", "esoph"),
    "larynx": ("larynx", "larynxglottic", "glotticlarynx"),
    "mandible": ("mandible", "bone mandible", "mandibula"),
}

#: a number below this (Gy) after "PTV" is an index (PTV1, PTV2), not a prescription
MIN_PRESCRIPTION_GY = 20.0
#: prescriptions outside this range (Gy) are far from anything the model saw: warned about
PLAUSIBLE_PRESCRIPTION_GY = (40.0, 80.0)

_CAMEL_1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_UNIT = re.compile(r"(?<=\d)\s*c?gy\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s_\-.]+")
_PTV = re.compile(r"^ptv\s*(\d+(?:[.,]\d+)?)\s*(c?gy)?$")


def normalise_name(name: str) -> str:
    """Lower-case words separated by single spaces (CamelCase split, ``_-.`` as separators).

    The decimal point of a dose is kept (``PTV_66.5`` -> ``ptv 66.5``).
    """
    text = _UNIT.sub(lambda m: " " + m.group(0).lower(), name.strip())  # "70cGy" -> "70 cgy"
    text = _CAMEL_2.sub(r"\1 \2", _CAMEL_1.sub(r"\1 \2", text))
    text = re.sub(r"(\d)[.,](\d)", "\\1\x00\\2", text)  # protect decimal points
    text = _SEPARATORS.sub(" ", text).strip().lower()
    return text.replace("\x00", ".")


def prescription_from_name(name: str) -> float | None:
    """The prescription (Gy) written in a PTV's name, or None when the name is not ``PTV<dose>``."""
    text = normalise_name(name)
    # "ptv 70 gy" -> "ptv70gy"; keep the number's decimal point
    match = _PTV.match(text.replace(" ", ""))
    if not match:
        return None
    value = float(match.group(1).replace(",", "."))
    unit = match.group(2)
    if unit == "cgy" or (unit is None and value >= 1000):
        value /= 100.0
    if value < MIN_PRESCRIPTION_GY:
        return None
    return value


def nearest_model_target(prescription_gy: float) -> str:
    """The model PTV whose prescription is nearest to ``prescription_gy`` (a tie: the higher one)."""
    return min(
        rois.TARGET_NAMES,
        key=lambda t: (abs(rois.PRESCRIPTION_GY[t] - prescription_gy), -rois.PRESCRIPTION_GY[t]),
    )


def _organ_and_side(text: str) -> tuple[str, str | None, int]:
    """Split normalised words into (organ key, side or None, number of side words)."""
    words = text.split(" ")
    sides = [SIDE_WORDS[w] for w in words if w in SIDE_WORDS]
    organ = [w for w in words if w not in SIDE_WORDS]
    side = sides[0] if len(set(sides)) == 1 else None
    return "".join(organ), side, len(sides)


def _build_oar_table() -> dict[tuple[str, str | None], str]:
    """(organ key, side) -> model OAR name, from the ROI table and ORGAN_SYNONYMS."""
    alias_to_key = {
        _organ_and_side(normalise_name(a))[0]: key for key, aliases in ORGAN_SYNONYMS.items() for a in aliases
    }
    table: dict[tuple[str, str | None], str] = {}
    for roi in rois.OAR_NAMES:
        organ, side, _ = _organ_and_side(normalise_name(roi))
        if organ not in ORGAN_SYNONYMS:
            raise RuntimeError(f"names.ORGAN_SYNONYMS has no entry for the model ROI {roi}")
        for alias, key in alias_to_key.items():
            if key == organ:
                table[(alias, side)] = roi
    return table


_OAR_TABLE = _build_oar_table()
_PAIRED = {organ for organ, side in _OAR_TABLE if side is not None}


def match_oar(name: str) -> tuple[str | None, str]:
    """(model OAR name or None, reason when None) for one structure name."""
    organ, side, n_sides = _organ_and_side(normalise_name(name))
    if n_sides > 1:
        return None, "more than one side word"
    roi = _OAR_TABLE.get((organ, side))
    if roi is not None:
        return roi, ""
    if organ in _PAIRED and side is None:
        return None, "paired organ without a side (add L/R)"
    if side is not None and (organ, None) in _OAR_TABLE:
        return None, "side given for an unpaired organ"
    return None, "not a structure the model knows"


def parse_rx(items: Iterable[str]) -> dict[str, float]:
    """``["PTV_high=70", "PTV low=56"]`` -> {name: Gy}; raises InputError on a malformed item."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, gy = item.rpartition("=")
        if not sep or not name.strip():
            raise InputError(f"--rx {item!r}: expected NAME=GY, e.g. PTV_high=70")
        try:
            value = float(gy.strip().lower().removesuffix("gy"))
        except ValueError:
            raise InputError(f"--rx {item!r}: {gy!r} is not a dose in Gy") from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"--rx {item!r}: the prescription must be a positive number of Gy")
        out[name.strip()] = value
    return out


def match_structures(
    names: Iterable[str], rx_overrides: dict[str, float] | None = None
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Map a patient's structure names onto the model's ROIs.

    names: the patient's structure names.
    rx_overrides: patient name -> prescription (Gy); makes that structure a target. A key matches
      a name exactly or, failing that, after ``normalise_name``.
    Returns ``(mapping, prescriptions, unmatched)``: mapping patient name -> model ROI (several
    patient names may map to one ROI: their masks are joined for the model); prescriptions
    patient name -> Gy for every matched target; unmatched patient name -> reason.
    Raises InputError when an ``rx_overrides`` key names no structure.
    """
    names = list(names)
    rx = _resolve_rx(names, rx_overrides or {})
    mapping: dict[str, str] = {}
    prescriptions: dict[str, float] = {}
    unmatched: dict[str, str] = {}
    for name in names:
        gy = rx.get(name, prescription_from_name(name))
        if gy is not None:
            mapping[name] = nearest_model_target(gy)
            prescriptions[name] = gy
            continue
        if normalise_name(name).replace(" ", "").startswith("ptv"):
            unmatched[name] = "PTV name without a dose in the form PTV<Gy> (pass --rx NAME=GY)"
            continue
        roi, reason = match_oar(name)
        if roi is None:
            unmatched[name] = reason
        else:
            mapping[name] = roi
    return mapping, prescriptions, unmatched


def _resolve_rx(names: list[str], rx_overrides: dict[str, float]) -> dict[str, float]:
    by_norm = {normalise_name(n): n for n in names}
    rx: dict[str, float] = {}
    for key, gy in rx_overrides.items():
        name = key if key in names else by_norm.get(normalise_name(key))
        if name is None:
            raise InputError(
                f"--rx {key}={gy:g}: no structure named {key!r} (structures: {', '.join(names)})"
            )
        rx[name] = float(gy)
    return rx
