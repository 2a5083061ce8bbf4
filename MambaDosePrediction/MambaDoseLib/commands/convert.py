"""``mambadose convert PATIENT_DIR OUT_DIR``: one OpenKBP patient folder -> NIfTI files.

Reads and validates the sparse CSV files (:mod:`MambaDoseLib.openkbp`) and writes ct.nii.gz,
dose.nii.gz (when the patient has a dose), possible_dose_mask.nii.gz and ``<ROI>.nii.gz`` for each
contoured ROI (:mod:`MambaDoseLib.volume_io`): the NIfTI voxel array is the OpenKBP array a[i, j, k],
the voxel size is voxel_dimensions.csv. An OUT_DIR that already holds any of these files is refused
unless --overwrite.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "convert one OpenKBP patient folder (sparse CSV) to NIfTI volumes (CT, dose, masks)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patient_dir", type=Path, metavar="PATIENT_DIR", help="OpenKBP folder pt_<N>/")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the .nii.gz files")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from MambaDoseLib import openkbp, volume_io

    patient = openkbp.read_patient(args.patient_dir)
    written = volume_io.write_patient_nifti(patient, args.out_dir, overwrite=args.overwrite)
    rois = ", ".join(patient.contoured_rois) or "none"
    log.info(
        "%s: %d file(s) written to %s (voxel size %s mm; dose %s; ROIs: %s)",
        patient.patient_id,
        len(written),
        args.out_dir,
        " x ".join(f"{s:g}" for s in patient.spacing_mm),
        "yes" if patient.dose_gy is not None else "no",
        rois,
    )
    for path in written:
        print(path)
    return 0
