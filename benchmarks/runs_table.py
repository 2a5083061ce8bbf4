"""A table of training runs from their ``history.csv`` files (``mambadose train``'s per-epoch log).

    python benchmarks/runs_table.py [NAME=]HISTORY.csv ... [--diff A:B ...]

For each run: epochs logged, the best epoch by the validation dose score (as the training keeps its
checkpoint) with its dose score, DVH score (per patient, and pooled when logged) and training loss,
the same at the last validated epoch (a fixed-length protocol's figure), and the median training
slices/s over the epochs after the first. ``--diff A:B`` prints B - A for the best and the last
validated dose and DVH scores (e.g. two runs of one seed that differ in one option). A name
defaults to the file's stem without ``_history``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a history.csv as floats (empty cells -> nan); refuses a file without epochs."""
    with open(path, newline="") as f:
        rows = [
            {k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
            for r in csv.DictReader(f)
        ]
    if not rows or "val_dose_score" not in rows[0]:
        raise SystemExit(f"{path}: not a training history (no rows, or no val_dose_score column)")
    return rows


def summarise(rows: list[dict[str, float]], source: str = "the history") -> dict[str, float]:
    """Best (lowest validation dose score) and last validated epochs, and the median slices/s."""
    validated = [r for r in rows if math.isfinite(r["val_dose_score"])]
    if not validated:
        raise SystemExit(f"{source}: no validated epoch")
    best = min(validated, key=lambda r: r["val_dose_score"])
    last = validated[-1]
    speeds = [r["slices_per_s"] for r in rows[1:] if math.isfinite(r.get("slices_per_s", math.nan))]
    out = {"epochs": rows[-1]["epoch"], "slices_per_s": statistics.median(speeds) if speeds else math.nan}
    for tag, r in (("best", best), ("last", last)):
        out[f"{tag}_epoch"] = r["epoch"]
        out[f"{tag}_dose"] = r["val_dose_score"]
        out[f"{tag}_dvh"] = r["val_dvh_score"]
        out[f"{tag}_dvh_pooled"] = r.get("val_dvh_score_pooled", math.nan)
        out[f"{tag}_loss"] = r["train_loss"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("histories", nargs="+", help="[NAME=]HISTORY.csv")
    parser.add_argument("--diff", action="append", default=[], help="A:B, two run names (B - A)")
    args = parser.parse_args()
    runs: dict[str, dict[str, float]] = {}
    for spec in args.histories:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec).stem.removesuffix("_history")
        if name in runs:
            raise SystemExit(f"{spec}: the name {name} is given twice")
        runs[name] = summarise(read_history(Path(path)), path)
    print(
        f"{'run':12s} epochs  best: epoch dose    DVH (pooled)     loss   last: epoch dose    DVH (pooled)"
        "     loss   slices/s"
    )
    for name, s in runs.items():
        print(
            f"{name:12s} {s['epochs']:6.0f}  {s['best_epoch']:11.0f} {s['best_dose']:.3f}  {s['best_dvh']:.3f} "
            f"({s['best_dvh_pooled']:.3f})  {s['best_loss']:.4f}  {s['last_epoch']:11.0f} {s['last_dose']:.3f}  "
            f"{s['last_dvh']:.3f} ({s['last_dvh_pooled']:.3f})  {s['last_loss']:.4f}  {s['slices_per_s']:8.0f}"
        )
    for spec in args.diff:
        a, sep, b = spec.partition(":")
        if not sep or a not in runs or b not in runs:
            raise SystemExit(f"--diff {spec!r}: expected A:B, two run names")
        d = {k: runs[b][k] - runs[a][k] for k in ("best_dose", "best_dvh", "last_dose", "last_dvh")}
        print(
            f"{b} - {a}: best dose {d['best_dose']:+.3f} DVH {d['best_dvh']:+.3f}; "
            f"last dose {d['last_dose']:+.3f} DVH {d['last_dvh']:+.3f} Gy"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
