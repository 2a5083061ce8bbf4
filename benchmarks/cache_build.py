"""Size, build time and load time of the compact patient cache (``mambadose preprocess``).

    python benchmarks/cache_build.py [--data /tmp/openkbp] [--out /tmp/mambadose-cache] [--workers 2]

Builds one cache per split (train-pats, validation-pats), then loads every patient back and checks
the quantisation bounds against the CSVs of a few patients. Prints one line per split and the total.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from MambaDoseLib.openkbp import read_patient
from MambaDoseTrainingLib.cache import CT_MAX, build_cache, list_cached, load_patient

SPLITS = ("train-pats", "validation-pats")


def check_against_source(cache_dir: Path, split_dir: Path, ids: list[str]) -> tuple[float, float]:
    """Largest CT (<= CT_MAX) and dose errors of the cached ``ids`` against their CSVs."""
    ct_err = dose_err = 0.0
    for pid in ids:
        cached, source = load_patient(cache_dir, pid), read_patient(split_dir / pid)
        inside = source.ct <= CT_MAX
        ct_err = max(ct_err, float(np.abs(cached.ct - source.ct)[inside].max()))
        dose_err = max(dose_err, float(np.abs(cached.dose_gy - source.dose_gy).max()))
        assert (cached.possible_dose_mask == source.possible_dose_mask).all()
        assert cached.structures.keys() == source.structures.keys()
        assert all((cached.structures[n] == m).all() for n, m in source.structures.items())
        assert cached.spacing_mm == source.spacing_mm
    return ct_err, dose_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/openkbp"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/mambadose-cache"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    total_bytes = 0
    for split in SPLITS:
        split_dir, cache_dir = args.data / split, args.out / split
        summary = build_cache(split_dir, cache_dir, progress=False, workers=args.workers, require_dose=True)
        ids = list_cached(cache_dir)
        start = time.perf_counter()
        for pid in ids:
            load_patient(cache_dir, pid)
        load_s = time.perf_counter() - start
        ct_err, dose_err = check_against_source(cache_dir, split_dir, ids[:3])
        on_disk = sum(p.stat().st_size for p in cache_dir.iterdir())
        total_bytes += on_disk
        print(
            f"{split}: {len(ids)} patients, {on_disk / 1e6:.1f} MB ({on_disk / len(ids) / 1e3:.0f} kB/patient), "
            f"build {summary['seconds']:.0f} s with {args.workers} workers, "
            f"load {load_s:.1f} s ({load_s / len(ids) * 1e3:.0f} ms/patient, 1 process), "
            f"max error on 3 patients: CT {ct_err:g}, dose {dose_err:.6f} Gy"
        )
    print(f"total: {total_bytes / 1e6:.1f} MB = {total_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
