"""dsaudit report at scale: time and output sizes on a catalog with thousands of findings.

Generates notMNIST-like letters (uint8 28x28; default 60k train / 10k test) and plants thousands
of findings: exact copies of train in test (2 % of test), brightened near copies (1 %), copies
with another label (500), duplicate groups inside train (1,000 pairs), blank images (200). Ingests
them (exact + both near recipes), then times ``dsaudit report`` writing HTML, JSON and Markdown
(each its own process, median of --runs), at the default caps and at 10x the default --limit
and --thumbnails, and prints each file's size.

Also prints the worst case the caps allow: the largest PNG a thumbnail can be (64x64 RGB noise),
so the HTML's bound holds whatever the catalog's size.

Usage: python benchmarks/report.py [--n-train 60000] [--n-test 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from catalog import api, synth  # noqa: E402
from catalog.preview import make_preview, to_png  # noqa: E402
from catalog.report import THUMBNAIL_PIXELS  # noqa: E402


def _make(n_train: int, n_test: int, directory: Path) -> Path:
    rng = np.random.default_rng(0)
    images, labels = synth.render_letters(n_train + n_test, rng)
    train, test = images[:n_train].copy(), images[n_train:].copy()
    train_labels, test_labels = labels[:n_train].copy(), labels[n_train:].copy()
    exact, near, conflicts = n_test // 50, n_test // 100, min(500, n_test // 20)
    picks = rng.choice(n_train, exact + near + conflicts, replace=False)
    test[:exact] = train[picks[:exact]]
    test_labels[:exact] = train_labels[picks[:exact]]
    test[exact : exact + near] = synth.brightness(train[picks[exact : exact + near]], 0.05)
    other = picks[exact + near :]
    test[exact + near : exact + near + conflicts] = train[other]
    test_labels[exact + near : exact + near + conflicts] = np.roll(train_labels[other], 1)
    # 1,000 duplicate pairs inside train and 200 blank images.
    train[n_train - 1000 :] = train[:1000]
    train[n_train - 1200 : n_train - 1000] = 0
    path = directory / "report-bench.npz"
    np.savez(path, x_train=train, y_train=train_labels, x_test=test, y_test=test_labels)
    return path


def _report(db: str, directory: Path, *extra: str) -> tuple[float, dict[str, int]]:
    files = {kind: directory / f"report.{kind}" for kind in ("html", "json", "md")}
    command = [sys.executable, "-m", "cli", "--db", db, "report", "bench", *extra]
    command += ["--html", str(files["html"]), "--json", str(files["json"])]
    command += ["--markdown", str(files["md"])]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, {kind: path.stat().st_size for kind, path in files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    noise = np.random.default_rng(1).integers(0, 256, (THUMBNAIL_PIXELS,) * 2 + (3,), np.uint8)
    worst = len(base64.b64encode(to_png(make_preview(noise, "noise", THUMBNAIL_PIXELS))))
    print(f"largest thumbnail ({THUMBNAIL_PIXELS}x{THUMBNAIL_PIXELS} RGB noise): {worst:,} bytes")
    print(f"  x 200 (default --thumbnails) = {200 * worst / 1e6:.2f} MB of pictures at most")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        archive = _make(options.n_train, options.n_test, directory)
        db = str(directory / "bench.db")
        started = time.perf_counter()
        api.ingest(db, "bench", "v1", api.plan([archive]))
        seconds = time.perf_counter() - started
        print(f"images: {options.n_train + options.n_test:,}; ingest {seconds:.1f} s")
        report = api.report(db, "bench", limit=0)
        print(
            f"findings: {report.leaks.exact_images:,} images across splits, "
            + ", ".join(f"{t.pairs_total:,} near pairs ({t.recipe})" for t in report.leaks.near)
            + f", {report.duplicates.groups_total:,} duplicate groups, "
            f"{report.overlap.conflict_images:,} label conflicts, {report.low_info.items:,} "
            "low-information items"
        )
        for label, extra in (
            ("defaults (--limit 20 --thumbnails 200)", ()),
            ("--limit 200 --thumbnails 2000", ("--limit", "200", "--thumbnails", "2000")),
        ):
            runs = [_report(db, directory, *extra) for _ in range(options.runs)]
            seconds = statistics.median(r[0] for r in runs)
            sizes = runs[-1][1]
            print(
                f"{label}: {seconds:.2f} s (median of {options.runs}); HTML "
                f"{sizes['html'] / 1e6:.2f} MB, JSON {sizes['json'] / 1e3:,.0f} kB, Markdown "
                f"{sizes['md'] / 1e3:,.1f} kB"
            )


if __name__ == "__main__":
    main()
