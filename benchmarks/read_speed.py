"""Time ``openkbp.read_patient`` (and the sparse dose writer) over real OpenKBP patients.

    python benchmarks/read_speed.py SPLIT_DIR [--patients 10] [--repeats 1]

SPLIT_DIR is an unpacked OpenKBP split (``pt_<N>/`` folders), e.g. /tmp/openkbp/train-pats.
Prints one line per patient (wall and CPU seconds to read; CSV megabytes) and the mean / max over patients. The
target is under 0.5 s per patient. The first read warms the imports (pandas) and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from MambaDoseLib import openkbp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_dir", type=Path, help="OpenKBP split folder with pt_<N>/ folders")
    parser.add_argument("--patients", type=int, default=10, help="how many patients (first N by number)")
    parser.add_argument("--repeats", type=int, default=1, help="reads per patient (the fastest counts)")
    args = parser.parse_args()

    folders = openkbp.list_patient_dirs(args.split_dir)[: args.patients]
    if not folders:
        raise SystemExit(f"{args.split_dir}: no pt_<N> folders")
    openkbp.read_patient(folders[0])  # warm-up: imports, page cache

    read_s, read_cpu_s, write_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            megabytes = sum(f.stat().st_size for f in folder.glob("*.csv")) / 1e6
            times, cpu_times = [], []
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                patient = openkbp.read_patient(folder)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - start_cpu)
            read_s.append(min(times))
            read_cpu_s.append(min(cpu_times))
            line = (
                f"{folder.name:>8}: read {read_s[-1]:.3f} s wall, {read_cpu_s[-1]:.3f} s CPU "
                f"({megabytes:.1f} MB of CSV)"
            )
            if patient.dose_gy is not None:
                start = time.perf_counter()
                openkbp.write_sparse_dose(Path(tmp) / f"{folder.name}.csv", patient.dose_gy)
                write_s.append(time.perf_counter() - start)
                line += f", write dose {write_s[-1]:.3f} s"
            print(line, flush=True)

    print(
        f"read_patient over {len(read_s)} patients: wall mean {statistics.mean(read_s):.3f} s, "
        f"max {max(read_s):.3f} s; CPU mean {statistics.mean(read_cpu_s):.3f} s, "
        f"max {max(read_cpu_s):.3f} s (target < 0.5 s; wall time grows with other load on the machine)"
    )
    if write_s:
        print(f"write_sparse_dose: mean {statistics.mean(write_s):.3f} s, max {max(write_s):.3f} s")


if __name__ == "__main__":
    main()
