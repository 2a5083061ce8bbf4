"""The structure-name matching table (docs/name_matching.md)."""

from __future__ import annotations

import pytest
from MambaDoseLib import rois
from MambaDoseLib.errors import InputError
from MambaDoseLib.names import (
    match_structures,
    nearest_model_target,
    normalise_name,
    parse_rx,
    prescription_from_name,
)

BRAINSTEM, CORD, RPAR, LPAR, ESO, LARYNX, MANDIBLE, PTV56, PTV63, PTV70 = rois.ROI_NAMES


@pytest.mark.parametrize(
    ("name", "roi", "gy"),
    [
        ("PTV_70", PTV70, 70.0),
        ("ptv70", PTV70, 70.0),
        ("PTV 70Gy", PTV70, 70.0),
        ("PTV70 Gy", PTV70, 70.0),
        ("PTV-70", PTV70, 70.0),
        ("PTV_7000", PTV70, 70.0),
        ("PTV_7000cGy", PTV70, 70.0),
        ("PTV63", PTV63, 63.0),
        ("PTV_56", PTV56, 56.0),
        ("PTV 66", PTV63, 66.0),  # nearest model PTV, own prescription kept
        ("PTV_66.5", PTV70, 66.5),  # tie 63/70 -> the higher
        ("PTV_66,5", PTV70, 66.5),
        ("PTV_54", PTV56, 54.0),
        ("PTV74", PTV70, 74.0),
        ("PTV59.4", PTV56, 59.4),
    ],
)
def test_targets(name, roi, gy):
    mapping, rx, unmatched = match_structures([name])
    assert mapping == {name: roi}
    assert rx == {name: pytest.approx(gy)}
    assert unmatched == {}


@pytest.mark.parametrize(
    ("name", "roi"),
    [
        ("Brainstem", BRAINSTEM),
        ("Brain Stem", BRAINSTEM),
        ("BrainStem", BRAINSTEM),
        ("brain_stem", BRAINSTEM),
        ("SpinalCord", CORD),
        ("Spinal_Cord", CORD),
        ("spinal cord", CORD),
        ("Cord", CORD),
        ("Parotid_L", LPAR),
        ("L Parotid", LPAR),
        ("Lt_Parotid", LPAR),
        ("LParotid", LPAR),
        ("LeftParotid", LPAR),
        ("Parotid Left", LPAR),
        ("PAROTID_LT", LPAR),
        ("Parotid_R", RPAR),
        ("R Parotid", RPAR),
        ("RightParotid", RPAR),
        ("ParotidR", RPAR),
        ("Esophagus", ESO),
        ("Oesophagus", ESO),
        ("Larynx", LARYNX),
        ("Mandible", MANDIBLE),
        ("Bone_Mandible", MANDIBLE),
    ],
)
def test_oars(name, roi):
    mapping, rx, unmatched = match_structures([name])
    assert mapping == {name: roi}
    assert rx == {} and unmatched == {}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Parotid", "without a side"),
        ("Parotids", "not a structure"),
        ("Cord_L", "unpaired"),
        ("Parotid_L_R", "more than one side"),
        ("Brainstem_PRV", "not a structure"),
        ("CTV70", "not a structure"),
        ("GTV", "not a structure"),
        ("PTV1", "PTV<Gy>"),
        ("PTV_high", "PTV<Gy>"),
        ("PTV70_eval", "PTV<Gy>"),
        ("BODY", "not a structure"),
    ],
)
def test_unmatched_with_reason(name, reason):
    mapping, rx, unmatched = match_structures([name])
    assert mapping == {} and rx == {}
    assert reason in unmatched[name]


def test_every_model_roi_matches_its_own_name():
    mapping, rx, unmatched = match_structures(rois.ROI_NAMES)
    assert mapping == {n: n for n in rois.ROI_NAMES}
    assert rx == rois.PRESCRIPTION_GY
    assert unmatched == {}


def test_rx_override_makes_a_target_and_overrides_the_name():
    mapping, rx, unmatched = match_structures(
        ["PTV_high", "PTV_70", "Cord"], {"ptv high": 66.0, "PTV_70": 69.96}
    )
    assert mapping == {"PTV_high": PTV63, "PTV_70": PTV70, "Cord": CORD}
    assert rx == {"PTV_high": 66.0, "PTV_70": 69.96}
    assert unmatched == {}


def test_rx_for_unknown_structure_is_refused():
    with pytest.raises(InputError, match="no structure named"):
        match_structures(["PTV70"], {"PTV80": 80.0})


def test_parse_rx():
    assert parse_rx(["PTV_high=70", "PTV low = 56Gy"]) == {"PTV_high": 70.0, "PTV low": 56.0}
    for bad in ["PTV70", "=70", "PTV=abc", "PTV=-3"]:
        with pytest.raises(InputError):
            parse_rx([bad])


def test_helpers():
    assert normalise_name("LeftParotid") == "left parotid"
    assert normalise_name("  PTV__66.5-Gy ") == "ptv 66.5 gy"
    assert prescription_from_name("PTV 2") is None
    assert prescription_from_name("PTV5600") == 56.0
    assert nearest_model_target(10.0) == PTV56
    assert nearest_model_target(100.0) == PTV70
