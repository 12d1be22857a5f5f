"""A killed ingest (SIGKILL, no chance to clean up) leaves the catalog exactly as it was."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from catalog import api, synth

ROOT = Path(__file__).resolve().parent.parent


def _state(db: Path) -> tuple:
    with sqlite3.connect(db) as raw:
        integrity = raw.execute("PRAGMA integrity_check").fetchall()
        foreign = raw.execute("PRAGMA foreign_key_check").fetchall()
        counts = tuple(
            raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in (
                "dataset",
                "version",
                "split",
                "source",
                "image",
                "item",
                "recipe",
                "signature",
                "band_key",
                "pair",
            )
        )
    return integrity, foreign, counts


N_IMAGES = 12_000


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough letters that an ingest runs for seconds: time to kill it midway."""
    images, labels = synth.render_letters(N_IMAGES, np.random.default_rng(7))
    path = tmp_path_factory.mktemp("crash") / "big.npz"
    np.savez(path, x_train=images, y_train=labels)
    return path


# Killed early (items and images being written) and late (band keys and pairs being written).
@pytest.mark.parametrize("wal_bytes", [256 * 1024, 12 * 1024 * 1024])
def test_sigkill_mid_ingest_leaves_catalog_unchanged(
    tmp_path: Path, big_archive: Path, wal_bytes: int
) -> None:
    db = tmp_path / "c.db"
    api.ingest(str(db), "small", "v1", {"train": np.arange(64, dtype=np.uint8).reshape(4, 4, 4)})
    before = _state(db)
    command = [
        sys.executable,
        "-m",
        "cli",
        "--db",
        str(db),
        "ingest",
        "big",
        "v1",
        str(big_archive),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wal = Path(f"{db}-wal")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if wal.exists() and wal.stat().st_size >= wal_bytes:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    integrity, foreign, counts = _state(db)
    assert integrity == [("ok",)]
    assert foreign == []
    assert (integrity, foreign, counts) == before
    assert [d.name for d in api.list_catalog(str(db)).datasets] == ["small"]

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert api.overlap(str(db), ["big"]).splits[0].items == N_IMAGES


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_mid_folder_ingest_leaves_catalog_unchanged_and_no_workers(
    tmp_path: Path,
) -> None:
    from PIL import Image

    images, labels = synth.render_letters(3000, np.random.default_rng(7))
    root = tmp_path / "letters"
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "train" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    db = tmp_path / "c.db"
    api.ingest(str(db), "small", "v1", {"train": np.arange(64, dtype=np.uint8).reshape(4, 4, 4)})
    before = _state(db)
    command = [sys.executable, "-m", "cli", "--db", str(db), "ingest", "big", "v1", str(root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Kill it while the decoding workers (grandchildren, under the forkserver) are running.
    deadline = time.monotonic() + 60
    below: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        below = _descendants(process.pid)
        if len(below) >= 4:  # resource tracker, forkserver, 2 workers
            break
        time.sleep(0.01)
    assert process.poll() is None, "the ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in below):
        time.sleep(0.1)
    assert not [p for p in below if _running(p)], "decoding workers outlived the ingest"
    assert _state(db) == before
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert api.overlap(str(db), ["big"]).splits[0].items == 3000
