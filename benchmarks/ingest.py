"""Audit at notMNIST scale: dsaudit ingest + overlap against the usual loops.

Generates notMNIST-like letters (28x28 float32 in -0.5..0.5, as the notMNIST assignment saves
them; default 60k train / 10k test, 1 % of test copied from train; `--n-train 200000 --n-valid
10000` for the 220k case), writes them as an .npz, and measures, median of --runs runs:

- dsaudit: `dsaudit ingest --exact-only` (digest + catalog insert, fresh SQLite file), the full
  `dsaudit ingest` (also both near-duplicate recipes, band join and verification), `overlap`;
  each as its own process, wall time from start to exit, and the ingest's peak RSS;
- baseline 1, the loop from the usual question, corrected
  (`np.equal(test, train[i]).all(axis=(1, 2)).any()` for each train image), timed on a sample
  and extrapolated to all of train;
- baseline 2, `np.unique(axis=0)` over all rows (exact duplicates in memory, no catalog).

Usage: python benchmarks/ingest.py [--n-train 60000] [--n-valid 0] [--n-test 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import dsaudit, exact_loop_seconds, unique_rows_seconds

from catalog import synth


def _make(
    n_train: int, n_valid: int, n_test: int, directory: Path
) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    letters, labels = synth.render_letters(n_train + n_valid + n_test, rng)
    pixels = letters.astype(np.float32) / 255 - 0.5
    train, valid = pixels[:n_train], pixels[n_train : n_train + n_valid]
    test = pixels[n_train + n_valid :]
    leaks = n_test // 100
    test[:leaks] = train[rng.choice(n_train, leaks, replace=False)]
    arrays = {
        "train_dataset": train,
        "train_labels": labels[:n_train],
        "test_dataset": test,
        "test_labels": labels[n_train + n_valid :],
    }
    if n_valid:
        arrays |= {"valid_dataset": valid, "valid_labels": labels[n_train : n_train + n_valid]}
    path = directory / "bench.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path, train, test


def _dsaudit(*args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one dsaudit process."""
    done = dsaudit(*args)
    return done.seconds, done.peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--n-valid", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop-sample", type=int, default=300)
    options = parser.parse_args()
    n = options.n_train + options.n_valid + options.n_test
    exact_times, ingest_times, overlap_times, loop_times, unique_times = [], [], [], [], []
    rss = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        archive, train, test = _make(options.n_train, options.n_valid, options.n_test, directory)
        for run in range(options.runs):
            db = str(directory / f"exact{run}.db")
            exact_times.append(
                _dsaudit("--db", db, "ingest", "bench", "v1", str(archive), "--exact-only")[0]
            )
            db = str(directory / f"run{run}.db")
            seconds, peak = _dsaudit("--db", db, "ingest", "bench", "v1", str(archive))
            ingest_times.append(seconds)
            rss.append(peak)
            overlap_times.append(_dsaudit("--db", db, "overlap", "bench", "--json")[0])

            sample = train[: options.loop_sample]
            loop_times.append(exact_loop_seconds(sample, test, options.n_train))

            started = time.perf_counter()
            rows = np.concatenate([train, test]).reshape(len(train) + len(test), -1)
            unique_times.append(time.perf_counter() - started + unique_rows_seconds(rows))
    exact = statistics.median(exact_times)
    ingest = statistics.median(ingest_times)
    overlap = statistics.median(overlap_times)
    loop = statistics.median(loop_times)
    unique = statistics.median(unique_times)
    print(f"images: {n:,} (28x28 float32 letters), median of {options.runs} runs")
    print(f"dsaudit ingest --exact-only: {exact:.2f} s = {n / exact:,.0f} images/s")
    print(
        f"dsaudit ingest, exact + near: {ingest:.2f} s = {n / ingest:,.0f} images/s, "
        f"peak RSS {max(rss):,.0f} MB"
    )
    print(f"dsaudit overlap --json (exact + near tiers): {overlap:.2f} s")
    print(f"baseline loop, train x test, exact only (extrapolated): {loop:.1f} s")
    print(f"  = {loop / exact:.0f}x dsaudit ingest --exact-only, {loop / ingest:.1f}x the full one")
    print(f"baseline np.unique(axis=0), in memory: {unique:.2f} s = {unique / exact:.2f}x exact")


if __name__ == "__main__":
    main()
