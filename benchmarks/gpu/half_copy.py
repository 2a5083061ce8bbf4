"""Float16 copies of model files (weights and card), e.g. to bring trained runs back from the GPU
machine, which returns at most 16 MiB a file (a 3D network's float32 file is larger).

    python3 benchmarks/gpu/half_copy.py SRC.safetensors DST.safetensors [SRC DST ...]

Each copy is written by ``weights.save_model`` with ``storage_dtype=torch.float16`` (atomic, the
card beside it says so); loading copies the weights back into the float32 model. Used by
``session4_collect.sh`` and ``session14_pair_watch.sh``.
"""

from __future__ import annotations

import sys

import torch
from MambaDoseLib.weights import load_model, save_model


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 2:
        raise SystemExit("usage: half_copy.py SRC DST [SRC DST ...]")
    for src, dst in zip(argv[::2], argv[1::2], strict=True):
        model, card = load_model(src)
        save_model(dst, model, card, storage_dtype=torch.float16)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
