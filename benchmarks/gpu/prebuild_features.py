"""Build the feature slice files of /tmp/cache/{train,val} (or --caches) once, before several trainings share them
(benchmarks/gpu/multiview_runs.sh, ensemble_runs.sh). A file, not a heredoc: the spawned workers
re-import the main script.

    python3 benchmarks/gpu/prebuild_features.py [--views axial,coronal,sagittal] [--workers 32]
        [--inplane-spacing MM] [--channels 2.5d] [--caches DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from MambaDoseLib.inference import parse_views
from MambaDoseTrainingLib.cache import list_cached
from MambaDoseTrainingLib.dataset import build_slice_files, feature_folder, resolve_channels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", default="axial")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--root", default="/tmp/feat")
    parser.add_argument("--channels", default="2d", help="as mambadose train's option")
    parser.add_argument("--inplane-spacing", type=float, default=None, help="as mambadose train's option")
    parser.add_argument("--caches", nargs="+", default=["/tmp/cache/train", "/tmp/cache/val"])
    args = parser.parse_args()
    channels = resolve_channels(args.channels)
    views = parse_views(args.views)
    for cache in args.caches:
        src = str(Path(cache).resolve())  # as `mambadose train` keys its folders
        folder = feature_folder(args.root, src, channels, views, args.inplane_spacing)
        build_slice_files(
            folder, list_cached(src), channels, cache_dir=src, workers=args.workers, views=views,
            inplane_spacing_mm=args.inplane_spacing,
        )  # fmt: skip
        print(cache, "features in", folder, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
