"""What recall two model band joins could reach on benchmarks/scale.py's data, and at what price.

Issue #6 asks for near-pair recall >= 0.99 against brute force at pixel-v1's default threshold
(RMS 0.08 on the 0-1 scale). On scale.py's data pixel-v1 finds 0.45 of those pairs at 1M images.
This script asks what a recipe built for that distance could do at a price the time targets
allow, from the data alone, without building one:

1. The brute force of `scale.brute_force` on ``--sample`` test rows against train + valid, which
   gives every near pair (within the threshold, not byte-equal, neither low-information) and
   the density: how many pairs each sample row has at each distance (all pairs, in bins of
   0.0005 over the whole range of RMS distances, 0 to 1).
2. Two model band joins of ``b`` bands of ``r`` rows on the exact distance, whose candidates per
   row and recall follow from that density alone:

   - **p-stable** (E2LSH, Datar et al. 2004), the standard LSH family for Euclidean distance:
     a row is ``floor((a.x + u) / w)`` for a Gaussian vector ``a`` and ``u`` uniform in
     ``[0, w)``, so two images at distance ``c`` agree in a row with probability
     `collision_probability` ``(c, w)``, in a band with its ``r``-th power. Searched over the
     width ``w`` and ``r``.
   - **ideal**: a band that collides with probability ``q ** ((d / R) ** 2)`` at distance ``d``
     (``q`` at the threshold ``R``), i.e. exponent ``rho = 1 / c**2``: the best a
     data-independent LSH family can reach for Euclidean distance, asymptotically and in the
     worst case over inputs (Andoni and Indyk 2006; O'Donnell, Wu and Zhou 2014). It is not a
     bound for a recipe fitted to the data (data-dependent hashing beats that exponent), and
     it was not built or measured here. Searched over ``q``.

   A pair at distance ``d`` is a candidate with probability ``1 - (1 - P_band(d)) ** b``; the
   expected candidates per row sum that over the density, and recall averages it over the near
   pairs. Neither model has the band join's cap on a bucket's members (`catalog.near`'s
   BUCKET_CAP), under which a real recipe finds fewer pairs in crowded buckets.

Candidates are counted against train + valid (95 % of the images) per sample row that is not
low-information (those have no pairs). Prints (or writes to ``--out``) a Markdown report: the
density, then for each band count the cheapest join of each model that reaches ``--target``
recall, and the best recall each reaches within each ``--budgets`` candidates per row.
Results: benchmarks/RESULTS.md, section 4.

    python benchmarks/recall_bound.py [--size 1M] [--sample 1000] [--bands 24,96]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scale import (
    CLOSE,
    DEFAULT_WORKDIR,
    PIXELS,
    THRESHOLD,
    brute_force,
    generate,
    is_low_info,
    load_split,
    parse_size,
)
from scipy.stats import norm

DENSITY_BINS = 2000
"""Over RMS 0 to 1 (every possible distance): bins of 0.0005."""
CUMULATIVE_AT = (0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30)
WIDTHS = np.linspace(0.5, 12.0, 93)
"""Bucket widths searched for the p-stable model, in units of the threshold."""
MAX_ROWS = 60
"""Rows per band searched for the p-stable model: 1 to this."""
QS = np.concatenate([np.linspace(0.001, 0.05, 50), np.linspace(0.05, 0.999, 950)])
"""Band collision probabilities at the threshold searched for the ideal model."""


def collision_probability(c: np.ndarray | float, w: float) -> np.ndarray:
    """P(two points at distance ``c`` share a p-stable bucket of width ``w``) (Datar et al.).

    ``p(c) = 1 - 2 Phi(-w/c) - 2 / (sqrt(2 pi) w/c) (1 - exp(-(w/c)^2 / 2))``; 1 at ``c = 0``,
    decreasing in ``c``.
    """
    c = np.asarray(c, dtype=np.float64)
    ratio = w / np.maximum(c, w * 1e-6)  # c = 0 is handled below; this keeps ratio**2 finite
    p = (
        1.0
        - 2.0 * norm.cdf(-ratio)
        - 2.0 / (np.sqrt(2.0 * np.pi) * ratio) * (1.0 - np.exp(-(ratio**2) / 2.0))
    )
    return np.where(c > 0, p, 1.0)


@dataclass(frozen=True)
class Join:
    """One model band join and what it costs on the data."""

    model: str
    bands: int
    setting: str
    recall: float
    recall_close: float
    candidates: float
    """Expected candidates per sample row."""


@dataclass(frozen=True)
class Density:
    """The pairs of the sample: the near ones' distances and all pairs' counts by distance."""

    near: np.ndarray
    """float64 distances of the near pairs (within the threshold)."""
    counts: np.ndarray
    """int64 pairs per bin (equal bins over [0, 1], the last one closed)."""
    rows: int
    """Sample rows the pairs belong to: the sample's rows that are not low-information."""

    @property
    def centres(self) -> np.ndarray:
        """float64 (bins,): the RMS distance at the middle of each bin."""
        return (np.arange(len(self.counts)) + 0.5) / len(self.counts)

    def per_row_within(self, distance: float) -> float:
        """Pairs per sample row in the bins wholly below ``distance``."""
        upto = int(np.floor(distance * len(self.counts) + 1e-9))
        return float(self.counts[:upto].sum()) / self.rows


@dataclass(frozen=True)
class Setting:
    """One model's parameters and its band collision probabilities on the data."""

    model: str
    label: str
    at_bins: np.ndarray
    """float64 (bins,): at each bin's centre."""
    at_near: np.ndarray
    """float64 (near pairs,): at each near pair's distance."""


def found(band: np.ndarray, bands: int) -> np.ndarray:
    """``1 - (1 - band) ** bands``: the chance that a pair shares at least one of ``bands``
    independent bands, each shared with probability ``band``."""
    return -np.expm1(bands * np.log1p(-np.minimum(band, np.nextafter(1.0, 0.0))))


def evaluate(
    density: Density, bands: int, at_bins: np.ndarray, at_near: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall, recall within CLOSE and expected candidates per row of several settings.

    Args:
        at_bins: (settings, bins) band collision probability at each bin's centre.
        at_near: (settings, near pairs) the same at each near pair's distance.

    Returns:
        Three float64 arrays (settings,).
    """
    hit = found(at_near, bands)
    close = density.near <= CLOSE
    count = len(at_bins)
    recall = hit.mean(axis=1) if density.near.size else np.ones(count)
    recall_close = hit[:, close].mean(axis=1) if close.any() else np.ones(count)
    candidates = found(at_bins, bands) @ density.counts / density.rows
    return recall, recall_close, candidates


def settings(density: Density, radius: float) -> list[Setting]:
    """Every setting searched: p-stable over WIDTHS x 1..MAX_ROWS, ideal over QS."""
    at = density.centres / radius
    near = density.near / radius
    out = []
    for w in WIDTHS:
        row_at, row_near = collision_probability(at, w), collision_probability(near, w)
        for rows in range(1, MAX_ROWS + 1):
            label = f"w = {w:.2f} R, r = {rows}"
            out.append(Setting("p-stable", label, row_at**rows, row_near**rows))
    for q in QS:
        out.append(Setting("ideal", f"q = {q:.3f}", q ** (at**2), q ** (near**2)))
    return out


def solve(
    density: Density,
    radius: float,
    bands: int,
    target: float,
    budgets: Sequence[float],
    searched: Sequence[Setting] | None = None,
) -> tuple[list[Join], list[tuple[Join, float]]]:
    """Each model's cheapest join reaching ``target`` recall, and its best recall per budget.

    The second list pairs each join with the budget of candidates per row it was chosen
    within. A model with no setting that qualifies is left out. ``searched`` defaults to
    `settings` of the density (pass it to reuse it for several band counts).
    """
    cheapest: list[Join] = []
    best: list[tuple[Join, float]] = []
    every = settings(density, radius) if searched is None else searched
    for model in ("p-stable", "ideal"):
        chosen = [s for s in every if s.model == model]
        if not chosen:
            continue
        recall, close, candidates = evaluate(
            density,
            bands,
            np.stack([s.at_bins for s in chosen]),
            np.stack([s.at_near for s in chosen]),
        )
        joins = [
            Join(model, bands, s.label, float(r), float(c), float(n))
            for s, r, c, n in zip(chosen, recall, close, candidates, strict=True)
        ]
        reaching = np.flatnonzero(recall >= target)
        if reaching.size:
            cheapest.append(joins[int(reaching[np.argmin(candidates[reaching])])])
        for budget in budgets:
            within = np.flatnonzero(candidates <= budget)
            if within.size:
                best.append((joins[int(within[np.argmax(recall[within])])], budget))
    return cheapest, best


def measure(size: int, workdir: Path, sample: int, seed: int) -> Density:
    """The near pairs and density of ``sample`` test rows of scale.py's data at ``size``."""
    generate(size, workdir / f"n{size}", seed)
    version = workdir / f"n{size}" / "v1"
    brute = brute_force(version, sample, seed, THRESHOLD, density=(1.0, DENSITY_BINS))
    assert brute.density is not None
    near = np.array(sorted(brute.pairs.values()), dtype=np.float64)
    test = load_split(version, "test")
    queries = np.asarray(test[brute.sample], np.float32).reshape(len(brute.sample), PIXELS) + 0.5
    return Density(near, brute.density, int((~is_low_info(queries)).sum()))


def report(
    density: Density,
    size: int,
    bands: Sequence[int],
    target: float,
    budgets: Sequence[float],
) -> str:
    """The Markdown report: the density, then each band count's joins (`solve`)."""
    lines = [
        f"Data: benchmarks/scale.py at {size:,} images; {density.rows:,} test rows (not "
        f"low-information) against train + valid; threshold R = {THRESHOLD} (RMS, 0-1 scale).",
        "",
        "| pairs per test row within | " + " | ".join(f"{d}" for d in CUMULATIVE_AT) + " |",
        "|---|" + "---:|" * len(CUMULATIVE_AT),
        "| all but low-information | "
        + " | ".join(f"{density.per_row_within(d):,.2f}" for d in CUMULATIVE_AT)
        + " |",
        "",
        f"Near pairs (within R, not byte-equal): {density.near.size:,}, of which "
        f"{int((density.near <= CLOSE).sum()):,} within {CLOSE}.",
        "",
        f"| bands | model | setting | recall | within {CLOSE} | expected candidates per row |",
        "|---:|---|---|---:|---:|---:|",
    ]
    searched = settings(density, THRESHOLD)
    rows: list[tuple[Join, str]] = []
    for b in bands:
        cheapest, best = solve(density, THRESHOLD, b, target, budgets, searched)
        rows += [(join, f"cheapest with recall >= {target}") for join in cheapest]
        rows += [(join, f"best recall within {budget:g}") for join, budget in best]
    for join, why in rows:
        lines.append(
            f"| {join.bands} | {join.model} | {join.setting} ({why}) | {join.recall:.3f} | "
            f"{join.recall_close:.3f} | {join.candidates:,.0f} |"
        )
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list like 24,96") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': band counts start at 1")
    return counts


def _budgets(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list like 215,1000") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--sample", type=int, default=1000, help="test rows (default 1000)")
    parser.add_argument(
        "--bands", type=_counts, default="24,96", help="band counts (default 24,96)"
    )
    parser.add_argument("--target", type=float, default=0.99, help="recall (default 0.99)")
    parser.add_argument(
        "--budgets",
        type=_budgets,
        default="215,1000",
        help="candidates per row (default 215,1000; pixel-v1 has about 215 at 1M, see RESULTS)",
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: print)")
    args = parser.parse_args(argv)
    density = measure(args.size, args.workdir, args.sample, args.seed)
    text = report(
        density,
        args.size,
        args.bands,
        args.target,
        args.budgets,
    )
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
