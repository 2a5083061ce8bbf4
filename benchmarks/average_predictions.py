"""Weighted mean of several folders of predictions (``pt_<N>.csv``), written as a new folder.

    python benchmarks/average_predictions.py OUT_DIR DIR[:WEIGHT] [DIR[:WEIGHT] ...]

Every folder must hold the same patients. ``DIR:6`` counts a folder six times, e.g. the shipped
six-network ensemble's dose beside one more network's gives the seven-network mean. Score the
result with ``mambadose evaluate SPLIT_DIR OUT_DIR``. OUT_DIR must not exist yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MambaDoseLib.openkbp import read_sparse_dose, write_sparse_dose


def parse_part(text: str) -> tuple[Path, float]:
    folder, _, weight = text.rpartition(":") if ":" in text else (text, "", "1")
    value = float(weight)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: the weight must be positive")
    return Path(folder), value


def average(out_dir: Path, parts: list[tuple[Path, float]]) -> int:
    ids = [sorted(p.name for p in folder.glob("pt_*.csv")) for folder, _ in parts]
    if not ids[0] or any(i != ids[0] for i in ids):
        raise ValueError(
            "the folders do not hold the same pt_*.csv files: " + ", ".join(str(f) for f, _ in parts)
        )
    out_dir.mkdir(parents=True)
    total = sum(w for _, w in parts)
    for name in ids[0]:
        dose = sum(w * read_sparse_dose(folder / name) for folder, w in parts) / total
        write_sparse_dose(out_dir / name, dose)
    return len(ids[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("parts", nargs="+", type=parse_part, metavar="DIR[:WEIGHT]")
    args = parser.parse_args(argv)
    print(f"averaged {average(args.out_dir, args.parts)} patients into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
