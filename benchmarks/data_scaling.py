"""A learning curve: the validation dose score of training runs against their number of training patients.

    python benchmarks/data_scaling.py N=HISTORY.csv [N=HISTORY.csv ...] [--target GY ...]
        [--which best|last] [--bootstrap 2000] [--seed 0] [--plot CURVE.png]

Each argument is one run: its number of training patients and its ``history.csv`` (``mambadose
train``'s per-epoch log; the run's best validated epoch by the dose score, as training keeps it, or
with ``--which last`` its last validated epoch). Printed: per N the runs, the mean and standard
deviation of their dose score and their mean DVH score (pooled when logged), then two fits over all
runs (least squares in Gy):

- ``power``: s(N) = b * N^-c, a straight line in log-log (no floor: the optimistic extrapolation);
- ``floor``: s(N) = a + b * N^-c, with a floor ``a`` the score would approach with unlimited
  patients (profiled: for each ``a`` on a grid below the lowest score, b and c from the log-log line
  of s - a; the ``a`` with the least squared error in Gy kept).

For each fit: its parameters, the scores it predicts at twice and four times the largest N, and for
each ``--target`` the N at which it reaches that score ("never" when the floor is at or above it),
with a 95 % interval from a bootstrap that resamples the runs within each N. Needs runs at three
or more distinct N.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from runs_table import read_history, summarise  # this folder is on sys.path when run as a script

FLOOR_GRID = 400  # candidate floors between 0 and just below the lowest score


def parse_run(spec: str) -> tuple[int, Path]:
    """``N=HISTORY.csv`` -> (N, path); a clear error for anything else."""
    n_text, sep, path = spec.partition("=")
    if not sep or not path:
        raise SystemExit(f"{spec!r}: expected N=HISTORY.csv (training patients = history file)")
    try:
        n = int(n_text)
    except ValueError:
        raise SystemExit(f"{spec!r}: the number of training patients {n_text!r} is not an integer") from None
    if n < 1:
        raise SystemExit(f"{spec!r}: the number of training patients must be >= 1")
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such history file")
    return n, Path(path)


def _loglog_lines(n: np.ndarray, s: np.ndarray, floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept, (G, 1) each, of the least-squares line of log(s - a) on log N for each
    floor a of ``floors`` (G, 1), every one below every score."""
    x = np.log(n)[None, :]
    y = np.log(s[None, :] - floors)
    xm, ym = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    slope = ((x - xm) * (y - ym)).sum(axis=1, keepdims=True) / ((x - xm) ** 2).sum()
    return slope, ym - slope * xm


def fit_power(n: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """b, c of s = b * N^-c (least squares of log s on log N: the line of a zero floor)."""
    slope, intercept = _loglog_lines(n, s, np.zeros((1, 1)))
    return float(math.exp(intercept[0, 0])), float(-slope[0, 0])


def fit_floor(n: np.ndarray, s: np.ndarray, grid: int = FLOOR_GRID) -> tuple[float, float, float]:
    """a, b, c of s = a + b * N^-c: profiled over the floor a in [0, min(s)) (vectorised over the
    grid); for each a, b and c from the least-squares line of log(s - a) on log N; kept: the a
    with the least squared error of s itself, among those with c > 0 (a score that falls with N)."""
    floors = np.linspace(0.0, float(s.min()), grid, endpoint=False)[:, None]  # (G, 1)
    slope, intercept = _loglog_lines(n, s, floors)
    pred = floors + np.exp(intercept + slope * np.log(n)[None, :])
    sse = ((pred - s[None, :]) ** 2).sum(axis=1)
    sse[slope[:, 0] >= 0] = np.inf
    k = int(np.argmin(sse))
    if not np.isfinite(sse[k]):
        raise SystemExit("the scores do not fall with the number of patients: no learning curve to fit")
    return float(floors[k, 0]), float(math.exp(intercept[k, 0])), float(-slope[k, 0])


def predict(params: tuple[float, float, float], n: float) -> float:
    a, b, c = params
    return a + b * n ** (-c)


def patients_needed(params: tuple[float, float, float], target: float) -> float:
    """N at which a + b N^-c reaches ``target`` (inf when the floor a is at or above it, or the
    score does not fall with N)."""
    a, b, c = params
    if target <= a or c <= 0:
        return math.inf
    try:
        return ((target - a) / b) ** (-1.0 / c)
    except OverflowError:
        return math.inf


def fits(n: np.ndarray, s: np.ndarray) -> dict[str, tuple[float, float, float]]:
    b, c = fit_power(n, s)
    return {"power": (0.0, b, c), "floor": fit_floor(n, s)}


def bootstrap(
    n: np.ndarray, s: np.ndarray, reps: int, seed: int
) -> dict[str, list[tuple[float, float, float]]]:
    """The fits on ``reps`` resamples of the runs, drawn with replacement within each N."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == v) for v in np.unique(n)]
    out: dict[str, list[tuple[float, float, float]]] = {"power": [], "floor": []}
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        for name, params in fits(n[idx], s[idx]).items():
            out[name].append(params)
    return out


def plot_curve(
    path: Path,
    n: np.ndarray,
    s: np.ndarray,
    fitted: dict[str, tuple[float, float, float]],
    targets: list[float],
) -> Path:
    """The learning curve as a PNG (written atomically): runs, means per N, fits, targets."""
    from MambaDoseLib.report import atomic_write
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(n, s, s=14, color="#888888", label="runs", zorder=3)
    groups = np.unique(n)
    ax.plot(groups, [s[n == v].mean() for v in groups], "ko", label="mean per N", zorder=4)
    grid = np.geomspace(groups[0], 4 * groups[-1], 200)
    styles = {"power": ("#1f77b4", "power law"), "floor": ("#d62728", "power law with a floor")}
    for name, params in fitted.items():
        colour, label = styles[name]
        ax.plot(grid, [predict(params, v) for v in grid], color=colour, label=label)
    for target in targets:
        ax.axhline(target, color="#2ca02c", linestyle=":", linewidth=1)
        ax.annotate(f"{target:.3f} Gy", (grid[0], target), color="#2ca02c", fontsize=8, va="bottom")
    ax.axvline(groups[-1], color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [*groups, 2 * groups[-1], 4 * groups[-1]]
    ax.set_xticks(ticks, [f"{v:.0f}" for v in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("training patients")
    ax.set_ylabel("validation dose score (Gy)")
    ax.set_title("Dose score against the number of training patients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def _fmt_n(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="N=HISTORY.csv: training patients and the run's history")
    parser.add_argument("--target", type=float, action="append", default=[], help="dose score, Gy")
    parser.add_argument("--which", choices=("best", "last"), default="best")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples for the intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="write the curve and the fits to this PNG")
    args = parser.parse_args()

    rows = []
    for spec in args.runs:
        n, path = parse_run(spec)
        summary = summarise(read_history(path), str(path))
        rows.append((n, summary[f"{args.which}_dose"], summary[f"{args.which}_dvh_pooled"], path))
    n = np.array([r[0] for r in rows], dtype=float)
    s = np.array([r[1] for r in rows], dtype=float)
    if np.unique(n).size < 3:
        raise SystemExit(f"runs at {np.unique(n).size} distinct N: a learning curve needs three or more")

    print(f"# {args.which} validated epoch of each run; dose and DVH scores in Gy")
    print(f"{'N':>5} {'runs':>4} {'dose mean':>9} {'sd':>6} {'DVH pooled':>10}  runs")
    for v in np.unique(n):
        group = [r for r in rows if r[0] == v]
        doses = [r[1] for r in group]
        dvh = [r[2] for r in group if math.isfinite(r[2])]
        sd = statistics.stdev(doses) if len(doses) > 1 else math.nan
        print(
            f"{int(v):>5} {len(group):>4} {statistics.fmean(doses):>9.3f} {sd:>6.3f} "
            f"{statistics.fmean(dvh) if dvh else math.nan:>10.3f}  {' '.join(r[3].stem.removesuffix('_history') for r in group)}"
        )

    largest = float(n.max())
    boot = bootstrap(n, s, args.bootstrap, args.seed) if args.bootstrap > 0 else {}
    fitted = fits(n, s)
    for name, params in fitted.items():
        a, b, c = params
        sse = float(((np.array([predict(params, v) for v in n]) - s) ** 2).sum())
        rms = math.sqrt(sse / len(s))
        law = f"{b:.3f} * N^-{c:.4f}" if name == "power" else f"{a:.3f} + {b:.3f} * N^-{c:.4f}"
        print(f"fit {name}: s(N) = {law}  (rms residual {rms:.3f} Gy)")
        print(
            f"  predicted at N = {largest:.0f} / {2 * largest:.0f} / {4 * largest:.0f}: "
            f"{predict(params, largest):.3f} / {predict(params, 2 * largest):.3f} / "
            f"{predict(params, 4 * largest):.3f} Gy"
        )
        for target in args.target:
            needed = patients_needed(params, target)
            line = f"  dose score {target:.3f} Gy at N = {_fmt_n(needed)}"
            if boot:
                draws = np.array([patients_needed(p, target) for p in boot[name]])
                # "never" (inf) sorts last; no interpolation, which would mix it with a finite N
                lo = np.percentile(draws, 2.5, method="lower")
                hi = np.percentile(draws, 97.5, method="higher")
                line += f" (95 % interval {_fmt_n(lo)} to {_fmt_n(hi)}, {args.bootstrap} resamples)"
            print(line)
    if args.plot is not None:
        print(f"plot: {plot_curve(args.plot, n, s, fitted, args.target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
