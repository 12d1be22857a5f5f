"""The band join's worst case: thousands of near-identical images in one bucket of every band.

Makes N copies of one rendered letter, each with three pixels nudged by up to 3 grey levels
(distinct digests, all within every threshold), ingests them into a fresh catalog, and reports
time, candidates and the duplicate group. Without the guard the join would propose every pair:
N(N-1)/2.

Usage: python benchmarks/blowup.py [--n 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from catalog import api, synth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    options = parser.parse_args()
    base, _labels = synth.render_letters(1, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    n = options.n
    images = np.repeat(base, n, axis=0).astype(np.int16).reshape(n, -1)
    for _ in range(3):
        images[np.arange(n), rng.integers(0, images.shape[1], n)] += rng.integers(-3, 4, n)
    images = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 28, 28)
    distinct = len(np.unique(images.reshape(n, -1), axis=0))
    with tempfile.TemporaryDirectory() as scratch:
        db = str(Path(scratch) / "c.db")
        started = time.perf_counter()
        result = api.ingest(db, "blowup", "v1", {"train": images})
        seconds = time.perf_counter() - started
        groups = api.duplicate_groups(db, ["blowup"])
    print(f"{n:,} items, {distinct:,} distinct near-identical images; ingest {seconds:.2f} s")
    for near in result.near:
        unguarded = near.images * (near.images - 1) // 2
        print(
            f"{near.recipe}: largest bucket {near.largest_bucket:,}, {near.capped_buckets} "
            f"buckets over the cap, {near.candidates:,} band-join proposals, counted in each "
            f"band that proposes them (all pairs: {unguarded:,}), "
            f"{near.pairs:,} pairs stored, join + verify {near.seconds:.2f} s"
        )
    print(
        f"dups: {groups.groups_total} group(s); the largest has {groups.groups[0].images:,} "
        f"images and {groups.groups[0].items:,} items"
    )


if __name__ == "__main__":
    main()
