"""Carry a folder of predicted doses (``pt_<N>.csv``, the submission format) between machines in
one small file, and write it back.

    python benchmarks/pack_predictions.py pack PRED_DIR OUT.npz
    python benchmarks/pack_predictions.py unpack IN.npz PRED_DIR

``pack`` stores each patient's non-zero voxels as flat indices (uint32) and doses rounded to
0.01 Gy (uint16 centigray, at most 655.35 Gy), compressed: a dose score moves by at most 0.005 Gy.
Used to bring a GPU machine's predictions back through its 16 MiB-a-file return path; ``unpack``
refuses to overwrite a file that is already there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from MambaDoseLib.openkbp import VOLUME_SHAPE, read_sparse_dose, write_sparse_dose

CENTIGRAY = 100.0


def pack(pred_dir: Path, out: Path) -> int:
    arrays = {}
    for csv in sorted(pred_dir.glob("pt_*.csv")):
        dose = read_sparse_dose(csv).ravel()
        idx = np.flatnonzero(dose > 0)
        cgy = np.round(dose[idx] * CENTIGRAY)
        if cgy.size and cgy.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"{csv}: dose above {np.iinfo(np.uint16).max / CENTIGRAY} Gy cannot be packed")
        arrays[f"{csv.stem}/index"] = idx.astype(np.uint32)
        arrays[f"{csv.stem}/cgy"] = cgy.astype(np.uint16)
    if not arrays:
        raise ValueError(f"{pred_dir}: no pt_*.csv files to pack")
    tmp = out.with_name(out.name + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return len(arrays) // 2


def unpack(npz: Path, pred_dir: Path) -> int:
    pred_dir.mkdir(parents=True, exist_ok=True)
    with np.load(npz) as data:
        ids = sorted({key.split("/")[0] for key in data.files})
        for pid in ids:
            path = pred_dir / f"{pid}.csv"
            if path.exists():
                raise FileExistsError(f"{path} exists; not overwritten")
            dose = np.zeros(int(np.prod(VOLUME_SHAPE)), np.float32)
            dose[data[f"{pid}/index"]] = data[f"{pid}/cgy"] / np.float32(CENTIGRAY)
            write_sparse_dose(path, dose.reshape(VOLUME_SHAPE))
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("pred_dir", type=Path)
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("npz", type=Path)
    u.add_argument("pred_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(f"packed {pack(args.pred_dir, args.out)} patients into {args.out}")
    else:
        print(f"wrote {unpack(args.npz, args.pred_dir)} patients into {args.pred_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
