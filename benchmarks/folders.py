"""Decoding an image folder: images/s with 1 and with 2 worker processes, and a whole ingest.

Writes --n notMNIST-like letters (uint8 28x28, `catalog.synth`) as grayscale PNG files in
ROOT/train/<letter>/ and ROOT/test/<letter>/ (a tenth in test), then measures, median of --runs:

- decoding alone: the folder's splits read through `FolderSplit.chunks` (read, sha256, Pillow
  decode, canonical rule, grouping into chunks) with ``workers=1`` (this process, no pool) and
  ``workers=2`` (a forkserver pool; its start-up is included);
- the CPU time decoding costs inside 2 worker processes, summed (on a busy machine the wall
  time says more about the other processes than about the pool);
- `dsaudit ingest --exact-only` of the folder (fresh catalog, its own process, one run), for
  comparison with the same letters ingested from an .npz.

The whole run takes about a minute on an idle 2-core machine.

Usage: python benchmarks/folders.py [--n 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from _common import dsaudit  # noqa: E402

from catalog import synth  # noqa: E402
from catalog.ingest import CHUNK_BYTES  # noqa: E402
from catalog.loaders import plan_folder  # noqa: E402
from catalog.loaders.folders import MAX_BATCH, decode_batch  # noqa: E402


def _write(n: int, directory: Path) -> tuple[Path, Path]:
    letters, labels = synth.render_letters(n, np.random.default_rng(0))
    root = directory / "letters"
    n_test = n // 10
    for i, (pixels, label) in enumerate(zip(letters, labels, strict=True)):
        split = "test" if i < n_test else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")
    archive = directory / "letters.npz"
    np.savez(
        archive,
        x_train=letters[n_test:],
        y_train=labels[n_test:],
        x_test=letters[:n_test],
        y_test=labels[:n_test],
    )
    return root, archive


def _decode(root: Path, workers: int) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, images)."""
    started, cpu = time.perf_counter(), time.process_time()
    count = 0
    for split in plan_folder(root, workers=workers):
        count += sum(len(chunk) for chunk in split.chunks(CHUNK_BYTES))
    return time.perf_counter() - started, time.process_time() - cpu, count


def _timed(root: str, batch: list[str]) -> tuple[int, float]:
    """decode_batch in a worker, with the worker's own CPU time."""
    cpu = time.process_time()
    return len(decode_batch(root, batch)), time.process_time() - cpu


def _worker_cpu(root: Path) -> float:
    """CPU seconds the decoding costs summed over 2 worker processes (what an idle machine
    would spread over its cores), measured with the same batches as the ingest uses."""
    files = [f for split in plan_folder(root) for f in (str(split.root / x) for x in split.files)]
    batches = [files[i : i + MAX_BATCH] for i in range(0, len(files), MAX_BATCH)]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        return sum(cpu for _n, cpu in pool.map(_timed, ["/"] * len(batches), batches))


def _ingest(source: Path, directory: Path) -> float:
    db = directory / f"bench-{time.monotonic_ns()}.db"
    return dsaudit("--db", str(db), "ingest", "d", "v1", str(source), "--exact-only").seconds


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        root, archive = _write(args.n, directory)
        size = sum(p.stat().st_size for p in root.rglob("*.png"))
        took = time.perf_counter() - started
        print(f"wrote {args.n:,} PNG files ({size / 1e6:.1f} MB) in {took:.1f} s")
        for workers in (1, 2):
            times, cpus = [], []
            for _ in range(args.runs):
                seconds, cpu, count = _decode(root, workers)
                assert count == args.n, count
                times.append(seconds)
                cpus.append(cpu)
            median = statistics.median(times)
            print(
                f"decode, {workers} process{'es' if workers > 1 else ''}: {median:.2f} s "
                f"({args.n / median:,.0f} images/s; runs {', '.join(f'{t:.2f}' for t in times)}); "
                f"main process CPU {statistics.median(cpus):.2f} s"
            )
        cpus = [_worker_cpu(root) for _ in range(args.runs)]
        print(
            f"decode CPU summed over 2 worker processes: {statistics.median(cpus):.2f} s "
            f"({statistics.median(cpus) / args.n * 1e6:.0f} us per image)"
        )
        print(f"load average (1, 5, 15 min) before timing: {_load()}")
        for name, source in (("folder", root), ("npz", archive)):
            seconds = _ingest(source, directory)
            print(
                f"dsaudit ingest --exact-only from the {name} (one run): {seconds:.2f} s "
                f"({args.n / seconds:,.0f} images/s)"
            )
        print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
