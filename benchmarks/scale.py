"""dsaudit from 125k to 1M images, against the usual baselines (issue #6).

Generates notMNIST-shaped data for each size (28x28 float32 in -0.5..0.5, splits train / valid
/ test 90 / 5 / 5 %, labels 0-9; see `generate`) and measures, median of --runs runs, each
dsaudit command its own process (wall time from start to exit, peak RSS of that process):

- ``dsaudit ingest`` of version v1 (exact digests, both default near recipes, band join,
  verification) into a fresh SQLite catalog; images/s and peak RSS;
- ``dsaudit overlap --json`` and ``dsaudit report --json -`` on that catalog: ``overlap`` of
  v1 reads the report its ingest stored; ``overlap`` of v1's splits named in reverse order is
  another report, computed from the items and pairs;
- incremental: ``dsaudit ingest`` of v2 (5 % of each split's rows replaced by new images, the
  rest unchanged) into the same catalog, against the first ingest's time;
- in the same run, the baselines: the corrected loop from the usual question
  (``np.equal(valid, train[i]).all(axis=(1, 2)).any()`` for train images against the valid
  split, timed on --loop-sample train images and extrapolated to all of train);
  ``np.unique(axis=0)``, a void-view ``np.unique`` and ``numpy_indexed.unique`` (when installed:
  the ``bench`` extra) on all rows for exact duplicates; a chunked BLAS brute-force nearest
  neighbour search (``|a-b|^2 = |a|^2 + |b|^2 - 2ab`` in float32, candidates re-checked in
  float64) of --sample test rows against train + valid at pixel-v1's default threshold (RMS on
  the 0-1 scale), extrapolated to all of test;
- the recall of the catalog's pixel-v1 pairs (read with SQL from the ``pair`` table) against
  that brute force, on the sample.

Writes a Markdown table (measures x sizes, ratios against the baselines) to --out (default:
print it), the raw numbers to WORKDIR/scale.json, and a log-log plot of time against N to
--plot (default benchmarks/scale.png; in --quick mode WORKDIR/scale-quick.png). Data and
catalogs go under --workdir; generated data is kept and reused while the generator is unchanged.

    python benchmarks/scale.py [--sizes 125k,250k,500k,1M] [--runs 3] [--out FILE]
    python benchmarks/scale.py --quick            # 20k and 40k images, one run: a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import dsaudit, exact_loop_seconds, unique_rows_seconds
from numpy.lib.format import open_memmap

from catalog import api, synth
from catalog.pixels import LOW_INFO_STD
from catalog.recipes import PIXEL

DATASET = "scale"
SIZE = 28
PIXELS = SIZE * SIZE
SPLITS = ("train", "valid", "test")
DEFAULT_SIZES = "125k,250k,500k,1M"
QUICK_SIZES = "20k,40k"
DEFAULT_WORKDIR = Path("/tmp/dsaudit-scale")
DEFAULT_PLOT = Path(__file__).resolve().parent / "scale.png"

GENERATOR = 1
"""Bump when generated data changes: cached data of an older generator is made again."""
GEN_CHUNK = 16_384
"""Rows generated and written at a time: memory stays bounded whatever the size."""
BANK_MAX = 50_000
"""Letters rendered with `catalog.synth.render_letters` (fewer for small sizes)."""
SHIFT = 2
"""Each image is a bank letter moved by up to this many pixels in x and y (zero fill)."""
BLANK, FAINT, EXACT, NEAR = 0.002, 0.001, 0.01, 0.01
"""Shares of each split's rows made blank (all -0.5), faint (a near-constant grey), exact copies
of train rows and near copies of train rows; train gets half of EXACT and NEAR (copies of other
train rows)."""
NEW_SHARE = 0.05
"""Share of each split's rows that v2 replaces with new images."""
THRESHOLD = PIXEL.default_threshold
PIXEL_RECIPE = PIXEL.name
CLOSE = 0.05
"""Recall is also given for pairs within this distance (as close as the planted edits)."""
BF_CHUNK = 32_768
"""Base rows per matrix product of the brute force."""
BF_SLACK = 0.1
"""Added to the squared-distance limit (sum over 784 pixels) before the float64 re-check, far
more than float32's rounding error in |a|^2 + |b|^2 - 2ab."""


# --- data ----------------------------------------------------------------------------------------


def split_sizes(n: int) -> dict[str, int]:
    """Rows per split: train / valid / test = 90 / 5 / 5 %."""
    held = n // 20
    return {"train": n - 2 * held, "valid": held, "test": held}


def parse_size(text: str) -> int:
    """``"125k"`` -> 125000, ``"1M"`` -> 1000000, ``"3000"`` -> 3000."""
    text = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        number = float(text[:-1] if scale > 1 else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not a number like 125k or 1M") from None
    if number * scale < 100:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 100 images")
    return int(number * scale)


def parse_sizes(text: str) -> list[int]:
    """``"125k,1M"`` -> [125000, 1000000], ascending."""
    return sorted(parse_size(part) for part in text.split(","))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def images_path(version: Path, split: str) -> Path:
    return version / f"{split}_x.npy"


def labels_path(version: Path, split: str) -> Path:
    return version / f"{split}_y.npy"


def split_args(version: Path) -> list[str]:
    """``--split NAME=IMAGES.npy:LABELS.npy`` for each split of a generated version."""
    args = []
    for split in SPLITS:
        args += ["--split", f"{split}={images_path(version, split)}:{labels_path(version, split)}"]
    return args


def _upsample_matrix(small: int, large: int) -> np.ndarray:
    """Bilinear interpolation weights, float32 (large, small): ``M @ field @ M.T``."""
    pos = np.clip((np.arange(large) + 0.5) * small / large - 0.5, 0, small - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, small - 1)
    frac = pos - low
    out = np.zeros((large, small))
    np.add.at(out, (np.arange(large), low), 1 - frac)
    np.add.at(out, (np.arange(large), high), frac)
    return out.astype(np.float32)


@dataclass(frozen=True)
class _Bank:
    letters: np.ndarray
    """float32 (B, 28 + 2 SHIFT, 28 + 2 SHIFT) on the 0-1 scale, zero margins."""
    labels: np.ndarray
    """int64 (B,), 0-9 for A-J."""


def _bank(n: int, seed: int) -> _Bank:
    count = min(BANK_MAX, max(1_000, n // 2))
    letters, labels = synth.render_letters(count, np.random.default_rng([seed, 0]))
    padded = np.zeros((count, SIZE + 2 * SHIFT, SIZE + 2 * SHIFT), np.float32)
    padded[:, SHIFT:-SHIFT, SHIFT:-SHIFT] = letters / np.float32(255)
    index = np.searchsorted(np.array(list(synth.LETTERS)), labels)
    return _Bank(padded, index.astype(np.int64))


def _letters(bank: _Bank, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """New images: a bank letter, moved by up to SHIFT pixels, at a random intensity (0.55-1),
    over a smooth random background (a 4x4 field of random amplitude up to 0.35, upsampled).

    Returns:
        float32 (count, 28, 28) in -0.5..0.5 and int64 (count,) labels.
    """
    pick = rng.integers(len(bank.labels), size=count)
    dy, dx = rng.integers(-SHIFT, SHIFT + 1, (2, count))
    intensity = rng.uniform(0.55, 1.0, count).astype(np.float32)
    amplitude = rng.uniform(0.0, 0.35, count).astype(np.float32)
    field = rng.random((count, 4, 4), dtype=np.float32) * amplitude[:, None, None]
    grid = np.arange(SIZE)
    rows = (grid[None, :] + SHIFT - dy[:, None])[:, :, None]
    cols = (grid[None, :] + SHIFT - dx[:, None])[:, None, :]
    images = bank.letters[pick[:, None, None], rows, cols]
    images *= intensity[:, None, None]
    upsample = _upsample_matrix(4, SIZE)
    np.maximum(images, upsample @ field @ upsample.T, out=images)
    images -= np.float32(0.5)
    return images, bank.labels[pick]


def _write_version(
    version: Path, sizes: dict[str, int], bank: _Bank, seed: int, stream: int
) -> None:
    version.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(SPLITS):
        count = sizes[split]
        x = open_memmap(images_path(version, split), "w+", np.float32, (count, SIZE, SIZE))
        y = open_memmap(labels_path(version, split), "w+", np.int64, (count,))
        for c, start in enumerate(range(0, count, GEN_CHUNK)):
            stop = min(count, start + GEN_CHUNK)
            rng = np.random.default_rng([seed, stream, s, c])
            x[start:stop], y[start:stop] = _letters(bank, stop - start, rng)
        x.flush()
        y.flush()
        del x, y


def _count(rows: int, share: float) -> int:
    return max(1, round(rows * share))


def _plant(version: Path, sizes: dict[str, int], seed: int) -> dict[str, dict[str, int]]:
    """Blank, faint, exact-copy and near-copy rows, in place. Returns counts per split."""
    rng = np.random.default_rng([seed, 3])
    arrays = {
        split: (
            np.load(images_path(version, split), mmap_mode="r+"),
            np.load(labels_path(version, split), mmap_mode="r+"),
        )
        for split in SPLITS
    }
    train_x, train_y = arrays["train"]
    plans: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        rows, copy_share = sizes[split], 0.5 if split == "train" else 1.0
        kinds = {
            "blank": _count(rows, BLANK),
            "faint": _count(rows, FAINT),
            "exact": _count(rows, EXACT * copy_share),
            "near": _count(rows, NEAR * copy_share),
        }
        order = rng.permutation(rows)
        ends = np.cumsum(list(kinds.values()))
        plans[split] = {
            kind: np.sort(order[end - k : end])
            for (kind, k), end in zip(kinds.items(), ends, strict=True)
        }
    # Copies come from train rows that are themselves left as generated.
    untouched = np.setdiff1d(
        np.arange(sizes["train"]), np.concatenate(list(plans["train"].values()))
    )
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        x, y = arrays[split]
        plan = plans[split]
        x[plan["blank"]] = np.float32(-0.5)
        faint = plan["faint"]
        level = rng.uniform(-0.5, -0.2, (len(faint), 1, 1))
        grey = level + rng.normal(0.0, LOW_INFO_STD / 5, (len(faint), SIZE, SIZE))
        x[faint] = np.clip(grey, -0.5, 0.5).astype(np.float32)
        source = np.sort(rng.choice(untouched, len(plan["exact"]), replace=False))
        x[plan["exact"]], y[plan["exact"]] = train_x[source], train_y[source]
        near = plan["near"]
        source = np.sort(rng.choice(untouched, len(near), replace=False))
        copies = np.asarray(train_x[source], dtype=np.float64)
        noisy = rng.random(len(near)) < 0.5  # half noise sigma 0.02, half brightness +-0.04
        copies[noisy] += rng.normal(0.0, 0.02, (int(noisy.sum()), SIZE, SIZE))
        copies[~noisy] += rng.choice([-0.04, 0.04], (int((~noisy).sum()), 1, 1))
        x[near] = np.clip(copies, -0.5, 0.5).astype(np.float32)
        y[near] = train_y[source]
        counts[split] = {kind: len(rows) for kind, rows in plan.items()}
    for x, y in arrays.values():
        x.flush()
        y.flush()
    return counts


def _derive_v2(v1: Path, v2: Path, sizes: dict[str, int], bank: _Bank, seed: int) -> None:
    """v2: v1 with NEW_SHARE of each split's rows replaced by new images."""
    v2.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(SPLITS):
        count = sizes[split]
        old_x = np.load(images_path(v1, split), mmap_mode="r")
        x = open_memmap(images_path(v2, split), "w+", np.float32, (count, SIZE, SIZE))
        for start in range(0, count, GEN_CHUNK):
            x[start : start + GEN_CHUNK] = old_x[start : start + GEN_CHUNK]
        y = np.load(labels_path(v1, split))
        rng = np.random.default_rng([seed, 2, s])
        replaced = np.sort(rng.choice(count, _count(count, NEW_SHARE), replace=False))
        for c, start in enumerate(range(0, len(replaced), GEN_CHUNK)):
            rows = replaced[start : start + GEN_CHUNK]
            x[rows], y[rows] = _letters(bank, len(rows), np.random.default_rng([seed, 2, s, c]))
        np.save(labels_path(v2, split), y)
        x.flush()
        del x


def generate(n: int, directory: Path, seed: int = 0) -> dict[str, object]:
    """Make (or reuse) the data of size ``n`` under ``directory``: ``v1/`` and ``v2/``, each
    with ``{train,valid,test}_x.npy`` (float32 (rows, 28, 28) in -0.5..0.5) and ``_y.npy``
    (int64 labels 0-9).

    Images are letters from `catalog.synth.render_letters` (a bank of up to 50k), each moved,
    dimmed and laid over a smooth random background (`_letters`), so distinct images are rarely
    within pixel-v1's threshold; the generator writes chunk by chunk through memory-mapped .npy
    files, each chunk from its own seeded generator: same ``n`` and ``seed``, same bytes. Then
    it plants, per split: blank rows (0.2 %), faint near-constant rows (0.1 %), exact copies of
    train rows (1 % of valid and test, 0.5 % of train) and near copies of train rows (same
    shares; Gaussian noise sigma 0.02 or brightness +-0.04 on the 0-1 scale).

    Returns:
        What was made: sizes, planted counts, seconds (0 when reused), in ``generated.json``.
    """
    marker = directory / "generated.json"
    wanted = {"generator": GENERATOR, "n": n, "seed": seed}
    if marker.exists():
        made = json.loads(marker.read_text())
        if {k: made.get(k) for k in wanted} == wanted:
            return made | {"seconds": 0.0}
    if directory.exists():
        shutil.rmtree(directory)
    started = time.perf_counter()
    sizes = split_sizes(n)
    bank = _bank(n, seed)
    _write_version(directory / "v1", sizes, bank, seed, stream=1)
    planted = _plant(directory / "v1", sizes, seed)
    _derive_v2(directory / "v1", directory / "v2", sizes, bank, seed)
    made = wanted | {"sizes": sizes, "planted": planted, "seconds": time.perf_counter() - started}
    marker.write_text(json.dumps(made, indent=1))
    return made


# --- baselines -----------------------------------------------------------------------------------


def load_split(version: Path, split: str) -> np.ndarray:
    return np.load(images_path(version, split), mmap_mode="r")


def unique_baselines(version: Path) -> dict[str, float]:
    """Seconds of each in-memory exact-duplicate baseline over all rows (reading them included).

    Keys: ``np.unique`` (``axis=0``), ``void unique`` (rows viewed as one opaque value each),
    ``numpy_indexed`` (``numpy_indexed.unique``; absent when the package is not installed).
    """
    started = time.perf_counter()
    rows = np.concatenate([load_split(version, split).reshape(-1, PIXELS) for split in SPLITS])
    load = time.perf_counter() - started
    out = {"np.unique": load + unique_rows_seconds(rows)}
    started = time.perf_counter()
    np.unique(rows.view(np.dtype((np.void, PIXELS * 4)))[:, 0], return_inverse=True)
    out["void unique"] = load + time.perf_counter() - started
    try:
        import numpy_indexed
    except ImportError:
        return out
    started = time.perf_counter()
    numpy_indexed.unique(rows, return_inverse=True)
    out["numpy_indexed"] = load + time.perf_counter() - started
    return out


def loop_baseline(version: Path, sample: int, seed: int) -> float:
    """The corrected loop, train images against valid, extrapolated to all of train (seconds)."""
    train = load_split(version, "train")
    valid = np.asarray(load_split(version, "valid"))
    picks = np.sort(np.random.default_rng([seed, 5]).choice(len(train), sample, replace=False))
    return exact_loop_seconds(np.asarray(train[picks]), valid, len(train))


@dataclass(frozen=True)
class BruteForce:
    """Near pairs of a sample of test rows against train + valid, by exhaustive search."""

    sample: np.ndarray
    """int64 (S,) test positions searched, ascending."""
    pairs: dict[tuple[int, str, int], float]
    """{(test position, split, position): distance} within THRESHOLD, not byte-equal, neither
    low-information."""
    exact: int
    """Pairs at distance 0 (exact copies: the exact tier, not near pairs)."""
    low_info: int
    """Pairs within THRESHOLD where either image is low-information (kept out of near pairs)."""
    read_seconds: float
    compute_seconds: float
    test_rows: int
    density: np.ndarray | None = None
    """With ``density=(top, bins)``: int64 (bins,) counts of all (sample row, train or valid
    row) pairs, neither low-information, by float32 RMS distance in equal bins over [0, top]
    (the last bin closed; pairs beyond ``top`` are not counted). Exact copies land in the first
    bin or two (float32 rounding). Not included in ``compute_seconds``. None otherwise."""

    @property
    def extrapolated_seconds(self) -> float:
        """Reading train + valid once, plus the products for every test row."""
        return self.read_seconds + self.compute_seconds * self.test_rows / len(self.sample)


def is_low_info(unit: np.ndarray) -> np.ndarray:
    """`catalog.pixels.low_information` on rows (n, 784) of 0-1 pixels, in float64."""
    return unit.std(axis=1, dtype=np.float64) < LOW_INFO_STD


def _histogram(
    squared: np.ndarray, query_low: np.ndarray, part_low: np.ndarray, density: tuple[float, int]
) -> np.ndarray:
    """`BruteForce.density`'s counts of one chunk of squared distances (float32 (q, p))."""
    rms = np.maximum(squared, 0)  # a new array: the caller still needs squared
    rms /= PIXELS
    np.sqrt(rms, out=rms)
    rms[query_low, :] = np.inf
    rms[:, part_low] = np.inf
    top, bins = density
    return np.histogram(rms, bins=bins, range=(0.0, top))[0]


def brute_force(
    version: Path,
    sample: int,
    seed: int,
    threshold: float = THRESHOLD,
    density: tuple[float, int] | None = None,
) -> BruteForce:
    """BLAS brute force of ``sample`` random test rows against train + valid (module docstring).

    Distances are RMS on the 0-1 scale (pixels + 0.5), pixel-v1's distance before its 8-bit
    rounding. Pairs pass a float32 screen with BF_SLACK to spare, then float64 decides.
    ``density=(top, bins)`` also counts every pair by distance (`BruteForce.density`;
    `benchmarks/recall_bound.py`): a histogram pass over each chunk's products, timed apart.
    """
    test = load_split(version, "test")
    rows = np.sort(np.random.default_rng([seed, 4]).choice(len(test), sample, replace=False))
    started = time.perf_counter()
    query = np.asarray(test[rows], np.float32).reshape(len(rows), PIXELS) + np.float32(0.5)
    query_sq = np.einsum("ij,ij->i", query, query)
    query_low = is_low_info(query)
    limit = PIXELS * threshold**2 + BF_SLACK
    read, compute = time.perf_counter() - started, 0.0
    pairs: dict[tuple[int, str, int], float] = {}
    exact = low_info = 0
    counts = None if density is None else np.zeros(density[1], np.int64)
    for split in ("train", "valid"):
        base = load_split(version, split)
        for start in range(0, len(base), BF_CHUNK):
            started = time.perf_counter()
            part = base[start : start + BF_CHUNK].reshape(-1, PIXELS) + np.float32(0.5)
            read += time.perf_counter() - started
            started = time.perf_counter()
            part_sq = np.einsum("ij,ij->i", part, part)
            squared = query_sq[:, None] + part_sq[None, :] - 2 * (query @ part.T)
            if counts is not None and density is not None:  # not part of the baseline's time
                compute += time.perf_counter() - started
                counts += _histogram(squared, query_low, is_low_info(part), density)
                started = time.perf_counter()
            i, j = np.nonzero(squared <= limit)
            diff = query[i].astype(np.float64) - part[j].astype(np.float64)
            distance = np.sqrt(np.einsum("ij,ij->i", diff, diff) / PIXELS)
            keep = distance <= threshold
            i, j, distance = i[keep], j[keep], distance[keep]
            low = query_low[i] | is_low_info(part[j])
            same = distance == 0
            exact += int(same.sum())
            low_info += int((low & ~same).sum())
            near = ~same & ~low
            for a, b, d in zip(i[near], j[near], distance[near], strict=True):
                pairs[int(rows[a]), split, start + int(b)] = float(d)
            compute += time.perf_counter() - started
    return BruteForce(rows, pairs, exact, low_info, read, compute, len(test), counts)


# --- our pairs, from the catalog ----------------------------------------------------------------


def catalog_pairs(db: Path, test_rows: Sequence[int]) -> dict[tuple[int, str, int], float]:
    """pixel-v1 pairs of the given v1 test positions with v1 train and valid items, by SQL.

    Returns:
        ``{(test position, split, position): stored distance}``.

    Every stored pair counts (distance within the recipe's radius, 0.1): a pair within the
    threshold on the raw pixels is within threshold + 1/255 after pixel-v1's 8-bit rounding,
    so it is stored whenever the band join proposed it. The recall measures the band join.
    """
    positions = ",".join(str(int(p)) for p in test_rows) or "-1"
    statement = f"""
        WITH v1 AS (
            SELECT s.id, s.name FROM split s
            JOIN version v ON v.id = s.version_id JOIN dataset d ON d.id = v.dataset_id
            WHERE d.name = '{DATASET}' AND v.tag = 'v1'
        ), t AS (
            SELECT it.position AS pos, it.image_id AS img FROM item it
            JOIN v1 ON v1.id = it.split_id
            WHERE v1.name = 'test' AND it.position IN ({positions})
        ), r AS (
            SELECT id FROM recipe WHERE name = '{PIXEL_RECIPE}'
        ), partner AS (
            SELECT t.pos, p.image_b AS other, p.distance FROM t
            JOIN pair p ON p.recipe_id = (SELECT id FROM r) AND p.image_a = t.img
            UNION ALL
            SELECT t.pos, p.image_a, p.distance FROM t
            JOIN pair p ON p.recipe_id = (SELECT id FROM r) AND p.image_b = t.img
        )
        SELECT partner.pos, v1.name, it.position, partner.distance FROM partner
        JOIN item it ON it.image_id = partner.other
        JOIN v1 ON v1.id = it.split_id
        WHERE v1.name IN ('train', 'valid')
    """
    result = api.run_sql(str(db), statement)
    return {(int(pos), str(split), int(row)): float(d) for pos, split, row, d in result.rows}


# --- measuring -----------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _fresh(db: Path) -> None:
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)


def measure(
    n: int, workdir: Path, *, runs: int, sample: int, loop_sample: int, seed: int = 0
) -> dict[str, object]:
    """Every measure of one size: lists of per-run values plus what the data and catalog hold.

    The catalog of the last run stays in ``workdir/nN/catalog.db`` for queries by hand.
    """
    directory = workdir / f"n{n}"
    _log(f"{n:,} images: generating data in {directory}")
    made = generate(n, directory, seed)
    v1, v2 = directory / "v1", directory / "v2"
    sizes = split_sizes(n)
    sample = min(sample, sizes["test"])
    loop_sample = min(loop_sample, sizes["train"])
    db = directory / "catalog.db"
    times: dict[str, list[float]] = {}
    near: dict[str, dict[str, int]] = {}
    brute: BruteForce | None = None

    def record(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    for run in range(runs):
        _fresh(db)
        _log(f"{n:,} images, run {run + 1}/{runs}: dsaudit ingest v1")
        done = dsaudit("--db", str(db), "ingest", DATASET, "v1", *split_args(v1), "--json")
        record("ingest", done.seconds)
        record("ingest_rss", done.peak_rss_mb)
        near = {
            stats["recipe"]: {"pairs": stats["pairs"], "candidates": stats["candidates"]}
            for stats in json.loads(done.stdout)["near"]
        }
        _log("overlap, report")
        record("overlap", dsaudit("--db", str(db), "overlap", f"{DATASET}@v1", "--json").seconds)
        # The same splits in another order are another report: computed, not the stored one.
        computed = [f"{DATASET}@v1:{split}" for split in reversed(SPLITS)]
        record("overlap computed", dsaudit("--db", str(db), "overlap", *computed, "--json").seconds)
        done = dsaudit("--db", str(db), "report", f"{DATASET}@v1", "--json", "-")
        record("report", done.seconds)
        _log("dsaudit ingest v2 (incremental)")
        done = dsaudit("--db", str(db), "ingest", DATASET, "v2", *split_args(v2), "--json")
        record("incremental", done.seconds)
        record("incremental_rss", done.peak_rss_mb)
        _log("baselines: loop, unique, brute force")
        record("loop", loop_baseline(v1, loop_sample, seed))
        for name, seconds in unique_baselines(v1).items():
            record(name, seconds)
        brute = brute_force(v1, sample, seed)
        record("brute force", brute.extrapolated_seconds)
        record("brute force sample", brute.read_seconds + brute.compute_seconds)
    assert brute is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _log(f"this script's peak RSS so far (the in-memory baselines): {peak:,.0f} MB")
    ours = catalog_pairs(db, brute.sample.tolist())
    truth = set(brute.pairs)
    found = truth & ours.keys()
    close = {pair for pair, distance in brute.pairs.items() if distance <= CLOSE}
    within = {pair for pair, distance in ours.items() if distance <= THRESHOLD}
    return {
        "n": n,
        "sizes": sizes,
        "planted": made["planted"],
        "generate_seconds": made["seconds"],
        "runs": runs,
        "times": times,
        "near": near,
        "recall": {
            "sample": len(brute.sample),
            "truth": len(truth),
            "found": len(found),
            "recall": len(found) / len(truth) if truth else None,
            "close_truth": len(close),
            "close_found": len(close & found),
            "extra": len(within - truth),
            "exact_pairs": brute.exact,
            "low_info_pairs": brute.low_info,
        },
    }


# --- output --------------------------------------------------------------------------------------


def _median(result: dict, key: str) -> float | None:
    values = result["times"].get(key)
    return statistics.median(values) if values else None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return (
        f"{value:,.0f} s" if value >= 100 else f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    )


def _against(result: dict, key: str) -> str:
    """A baseline's median time and its ratio to dsaudit ingest v1."""
    value, ingest = _median(result, key), _median(result, "ingest")
    if value is None or not ingest:
        return "-"
    return f"{_seconds(value)} ({value / ingest:.2g}x ingest)"


def table(results: Sequence[dict]) -> str:
    """Measures as rows, sizes as columns."""

    def row(label: str, cell: Callable[[dict], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in results) + " |"

    def pairs(r: dict) -> str:
        return " / ".join(f"{v['pairs']:,}" for v in r["near"].values())

    def recall(r: dict) -> str:
        rec = r["recall"]
        if rec["recall"] is None:
            return f"no pairs in {rec['sample']:,} rows"
        close = rec["close_found"] / rec["close_truth"] if rec["close_truth"] else float("nan")
        return (
            f"{rec['recall']:.3f} ({rec['found']:,} of {rec['truth']:,} pairs of "
            f"{rec['sample']:,} test rows); within {CLOSE}: {close:.3f} "
            f"({rec['close_found']:,} of {rec['close_truth']:,})"
        )

    def ingest(r: dict) -> str:
        seconds = _median(r, "ingest")
        return f"{_seconds(seconds)} ({r['n'] / seconds:,.0f} images/s)"

    def incremental(r: dict) -> str:
        seconds, first = _median(r, "incremental"), _median(r, "ingest")
        return f"{_seconds(seconds)} ({seconds / first:.2f}x v1)"

    recipes = " / ".join(results[0]["near"]) if results else ""
    lines = [
        "| measure | " + " | ".join(f"{r['n']:,} images" for r in results) + " |",
        "|---|" + "---:|" * len(results),
        row(
            "train / valid / test",
            lambda r: " / ".join(f"{r['sizes'][s]:,}" for s in SPLITS),
        ),
        row("`dsaudit ingest` v1 (exact + near, fresh catalog)", ingest),
        row("peak RSS of that ingest", lambda r: f"{_median(r, 'ingest_rss'):,.0f} MB"),
        row(f"near pairs stored ({recipes})", pairs),
        row(
            "`dsaudit overlap --json` (v1: the report its ingest stored)",
            lambda r: _seconds(_median(r, "overlap")),
        ),
        row(
            "`dsaudit overlap --json` computed (v1's splits named test, valid, train)",
            lambda r: _seconds(_median(r, "overlap computed")),
        ),
        row("`dsaudit report --json -`", lambda r: _seconds(_median(r, "report"))),
        row("`dsaudit ingest` v2 (5 % new, rest unchanged)", incremental),
        row(
            "peak RSS of the v2 ingest",
            lambda r: f"{_median(r, 'incremental_rss'):,.0f} MB",
        ),
        row("baseline: loop train vs valid, exact (extrapolated)", lambda r: _against(r, "loop")),
        row("baseline: `np.unique(axis=0)`, exact", lambda r: _against(r, "np.unique")),
        row("baseline: void-view `np.unique`, exact", lambda r: _against(r, "void unique")),
        row("baseline: `numpy_indexed.unique`, exact", lambda r: _against(r, "numpy_indexed")),
        row(
            f"baseline: BLAS brute force test vs train+valid at {THRESHOLD} (extrapolated)",
            lambda r: _against(r, "brute force"),
        ),
        row(f"{PIXEL_RECIPE} recall vs the brute force (sample)", recall),
    ]
    return "\n".join(lines)


def header(results: Sequence[dict], command: str) -> str:
    import sqlite3

    runs = results[0]["runs"] if results else 0
    return (
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, nproc "
        f"{os.cpu_count()}, Python {platform.python_version()}, numpy {np.__version__}, SQLite "
        f"{sqlite3.sqlite_version}; median of {runs} run(s). `{command}`"
    )


PLOTTED = (
    ("ingest", "dsaudit ingest v1", "-"),
    ("incremental", "dsaudit ingest v2 (+5 %)", "-"),
    ("overlap", "dsaudit overlap --json (stored)", "-"),
    ("overlap computed", "dsaudit overlap --json (computed)", "-"),
    ("report", "dsaudit report --json", "-"),
    ("loop", "loop train vs valid (extrapolated)", "--"),
    ("np.unique", "np.unique(axis=0)", ":"),
    ("void unique", "void-view np.unique", ":"),
    ("numpy_indexed", "numpy_indexed.unique", ":"),
    ("brute force", "BLAS brute force (extrapolated)", "--"),
)


def plot(results: Sequence[dict], path: Path) -> bool:
    """Log-log time against N; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(9, 4.5))
    ns = [r["n"] for r in results]
    for key, label, style in PLOTTED:
        values = [_median(r, key) for r in results]
        if all(v is not None for v in values):
            axes.plot(ns, values, style, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("images (train + valid + test)")
    axes.set_ylabel("seconds (median)")
    axes.set_title("dsaudit against the usual baselines (dashed: extrapolated from a sample)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, help=f"comma-separated (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--runs", type=_positive, help="median of this many (default 3)")
    parser.add_argument("--sample", type=_positive, help="test rows brute-forced (1000)")
    parser.add_argument("--loop-sample", type=_positive, help="train rows looped (200)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: print)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default scale.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 1 run, samples 500 and 50"
    )
    args = parser.parse_args(argv)
    quick = args.quick

    def chosen(value: object, in_quick: object, default: object) -> object:
        return value if value is not None else in_quick if quick else default

    sizes = chosen(args.sizes, parse_sizes(QUICK_SIZES), parse_sizes(DEFAULT_SIZES))
    runs = chosen(args.runs, 1, 3)
    sample = chosen(args.sample, 500, 1000)
    loop_sample = chosen(args.loop_sample, 50, 200)
    plot_path = chosen(args.plot, args.workdir / "scale-quick.png", DEFAULT_PLOT)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = [
        measure(n, args.workdir, runs=runs, sample=sample, loop_sample=loop_sample, seed=args.seed)
        for n in sizes
    ]
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = header(results, command.strip()) + "\n\n" + table(results) + "\n"
    (args.workdir / "scale.json").write_text(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if plot(results, plot_path):
        _log(f"plot: {plot_path}")
    else:
        _log("no plot: matplotlib is not installed (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
