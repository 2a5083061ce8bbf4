"""What resampling OpenKBP patients to one in-plane voxel size costs: field of view, dose, time.

    python benchmarks/inplane_resampling.py SOURCE [SOURCE ...] [--spacing 3.906] [--repeats 5]

SOURCE: a training cache folder (``mambadose preprocess``: index.json + pt_<N>.npz.xz) or an
unpacked OpenKBP split (pt_<N>/ CSV folders), e.g. /tmp/openkbp/validation-pats.

Per source:
- field of view: patients whose possible-dose voxels fall outside the ``128 x spacing`` field of
  the resampled grid (``spacing.InplaneMap.pdm_voxels_outside``), and how many voxels;
- round trip of the reference dose, native -> spacing -> native (``resample_patient_inplane``,
  then ``resample_dose_back`` within the resampled possible-dose mask, zero outside the native
  one: what validation and prediction do with a perfect model on the resampled grid): the dose
  score (mean absolute error in Gy inside the possible-dose mask) and the DVH score against the
  native reference, as means over patients, all of them and those whose grid changes. This is
  the floor that resampling puts under a model's scores. The same with plain linear
  interpolation both ways (``within`` not given), the alternative the module turned down.
Then the speed of one 128^3 volume on one core: ``resample_dose_back`` (plain and within a mask)
and a whole ``resample_patient_inplane``, against ``scipy.ndimage.map_coordinates(order=1)`` at
the same points (and the largest difference between the two).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, before numpy loads

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from MambaDoseLib.metrics import dose_score, dvh_score, openkbp_dvh_metrics  # noqa: E402
from MambaDoseLib.patient import Patient  # noqa: E402
from MambaDoseLib.spacing import (  # noqa: E402
    resample_dose_back,
    resample_inplane,
    resample_patient_inplane,
)


def patients(source: Path) -> Iterator[Patient]:
    """The patients of a cache folder or an OpenKBP split folder, in patient-number order."""
    if (source / "index.json").is_file():
        from MambaDoseTrainingLib.cache import list_cached, load_patient

        for pid in list_cached(source):
            yield load_patient(source, pid)
    else:
        from MambaDoseLib.openkbp import list_patient_dirs, read_patient

        for folder in list_patient_dirs(source):
            yield read_patient(folder)


def survey(source: Path, spacing_mm: float) -> Patient | None:
    """Print the field-of-view and round-trip figures of one source; returns a patient whose grid
    changes (for the timing)."""
    n = 0
    cropped: list[tuple[str, int, int, float]] = []
    scores: dict[str, list[tuple[bool, float, float]]] = {"within the mask": [], "plain linear": []}
    spacings: dict[float, int] = {}
    example = None
    for patient in patients(source):
        n += 1
        spacings[patient.spacing_mm[0]] = spacings.get(patient.spacing_mm[0], 0) + 1
        resampled, inplane = resample_patient_inplane(patient, spacing_mm)
        changes = not inplane.is_identity
        if changes and example is None:
            example = patient
        if inplane.pdm_voxels_outside:
            total = int(np.count_nonzero(patient.possible_dose_mask))
            cropped.append(
                (patient.patient_id, inplane.pdm_voxels_outside, total, float(patient.spacing_mm[0]))
            )
        if patient.dose_gy is None:
            continue
        pdm = np.asarray(patient.possible_dose_mask, bool)
        ref_metrics = openkbp_dvh_metrics(patient.dose_gy, patient.structures, patient.voxel_volume_mm3)
        trips = {
            "within the mask": resample_dose_back(
                resampled.dose_gy, inplane, within=resampled.possible_dose_mask
            ),
            "plain linear": resample_dose_back(resample_inplane(patient.dose_gy, inplane), inplane),
        }
        for name, back in trips.items():
            back[~pdm] = 0.0
            got_metrics = openkbp_dvh_metrics(back, patient.structures, patient.voxel_volume_mm3)
            scores[name].append(
                (changes, dose_score(back, patient.dose_gy, pdm), dvh_score(got_metrics, ref_metrics))
            )

    print(f"\n{source}: {n} patients; in-plane spacing (mm): patients")
    print("  " + ", ".join(f"{s:.3f}: {c}" for s, c in sorted(spacings.items())))
    print(f"field of view at {spacing_mm:g} mm ({128 * spacing_mm:.0f} mm across):")
    if cropped:
        voxels = sum(c[1] for c in cropped)
        all_pdm = sum(c[2] for c in cropped)
        print(
            f"  {len(cropped)} of {n} patients have possible-dose voxels outside the field: "
            f"{voxels} voxels in all ({100 * voxels / all_pdm:.3f} % of those patients' masks)"
        )
        for pid, count, total, native in sorted(cropped, key=lambda c: -c[1]):
            print(
                f"    {pid}: {count} of {total} voxels ({100 * count / total:.3f} %), native {native:.3f} mm"
            )
    else:
        print(f"  no patient of {n} has possible-dose voxels outside the field")
    for name, rows in scores.items():
        if not rows:
            continue
        changed = [s for s in rows if s[0]]
        print(
            f"round trip native -> {spacing_mm:g} mm -> native of the reference dose, {name} "
            f"({len(rows)} patients, {len(changed)} on another grid):"
        )
        for label, group in (("all patients", rows), ("grid changes", changed)):
            if group:
                d = [s[1] for s in group]
                v = [s[2] for s in group if np.isfinite(s[2])]
                print(
                    f"  {label:>13}: dose score mean {statistics.mean(d):.4f} Gy (max {max(d):.4f}), "
                    f"DVH score mean {statistics.mean(v):.4f} Gy (max {max(v):.4f})"
                )
    return example


def timing(patient: Patient, spacing_mm: float, repeats: int) -> None:
    """One-core times of the back-resampling and of a whole patient, against map_coordinates."""
    from scipy import ndimage

    resampled, inplane = resample_patient_inplane(patient, spacing_mm)
    dose = resampled.dose_gy if resampled.dose_gy is not None else resampled.ct

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    rows, cols = (inplane.resampled_index_of_native(n) for n in (0, 1))
    grid = np.meshgrid(rows, cols, np.arange(inplane.native_shape[2], dtype=float), indexing="ij")
    ours = resample_dose_back(dose, inplane)
    theirs = ndimage.map_coordinates(dose, grid, order=1, mode="constant", cval=0.0)
    covered = inplane.native_covered()
    diff = float(np.abs(ours - theirs)[covered].max())
    t_back = best(lambda: resample_dose_back(dose, inplane))
    within = resampled.possible_dose_mask
    t_within = best(lambda: resample_dose_back(dose, inplane, within=within))
    t_scipy = best(lambda: ndimage.map_coordinates(dose, grid, order=1, mode="constant", cval=0.0))
    t_patient = best(lambda: resample_patient_inplane(patient, spacing_mm))
    print(
        f"\nspeed, one core, {patient.patient_id} ({patient.spacing_mm[0]:.3f} mm, "
        f"{len(patient.structures)} structures), best of {repeats}:"
    )
    print(
        f"  resample_dose_back (128^3 float32): {1000 * t_back:.1f} ms plain, {1000 * t_within:.1f} ms within the mask"
    )
    print(
        f"  scipy.ndimage.map_coordinates order=1, same points: {1000 * t_scipy:.1f} ms (max |diff| {diff:.2e} Gy)"
    )
    print(
        f"  resample_patient_inplane (CT, dose, possible-dose mask, {len(patient.structures)} structures): "
        f"{1000 * t_patient:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, nargs="+", help="cache folders or OpenKBP split folders")
    parser.add_argument("--spacing", type=float, default=3.906, help="in-plane voxel size (mm)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (the fastest counts)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the per-patient warnings are summarised here
    example = None
    for source in args.sources:
        example = survey(source, args.spacing) or example
    if example is not None:
        timing(example, args.spacing, args.repeats)


if __name__ == "__main__":
    main()
