"""Write the patients of a training cache back as OpenKBP folders (for predict-openkbp + evaluate on
a machine that holds only the cache, e.g. the lent GPU machine).

    python benchmarks/gpu/cache_to_openkbp.py CACHE_DIR OUT_DIR

The CT comes back at the cache's quantisation (README, "Compact cache"), exactly as training and
validation saw it; dose, masks and voxel size come back as they were read.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from MambaDoseLib.openkbp import write_patient
from MambaDoseTrainingLib.cache import list_cached, load_patient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()

    def one(pid: str) -> None:
        write_patient(load_patient(args.cache_dir, pid), args.out_dir / pid)

    ids = list_cached(args.cache_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, ids))
    print(f"wrote {len(ids)} patient folders to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
