"""A killed ingest (SIGKILL, no chance to clean up) leaves the catalog exactly as it was.

Two ways of choosing the moment: at set amounts of written log (early: items and images being
written; late: band keys and pairs), and at seeded random times stratified over the ingest's
measured duration (5 in the default run, 20 with ``-m slow``). After every kill the catalog must
pass ``PRAGMA integrity_check`` and ``foreign_key_check``, hold exactly the rows it held before
(no partial version is visible), and the same ingest must then succeed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from catalog import api, synth
from catalog.db import storage_error

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


def _ingest_command(db: Path, archive: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "--db", str(db), "ingest", "big", "v1", str(archive)]


_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start(
    db: Path, archive: Path, stdout: int = subprocess.DEVNULL
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the ingest; return it and the moment it opened the catalog (its WAL appears)."""
    process = subprocess.Popen(
        _ingest_command(db, archive),
        cwd=ROOT,
        env=_ENV,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )
    wal = Path(f"{db}-wal")
    deadline = time.monotonic() + 60
    while not wal.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return process, time.monotonic()


def _base_catalog(directory: Path) -> Path:
    db = directory / "base.db"
    api.ingest(str(db), "small", "v1", {"train": np.arange(64, dtype=np.uint8).reshape(4, 4, 4)})
    assert not Path(f"{db}-wal").exists()  # everything is in the one file: copies are whole
    return db


def _ingest_seconds(base: Path, archive: Path, directory: Path, runs: int) -> float:
    """How long the ingest takes from opening the catalog to committing (its result appears on
    stdout right after): the shortest of ``runs`` full runs on copies. Kills later than that
    would land after the commit, in the printing and exit."""
    seconds = []
    for run in range(runs):
        db = directory / f"measured-{run}.db"
        shutil.copy(base, db)
        process, opened = _start(db, archive, stdout=subprocess.PIPE)
        assert process.stdout is not None
        process.stdout.read(1)
        seconds.append(time.monotonic() - opened)
        process.communicate(timeout=300)  # reads the rest and closes the pipe
        assert process.returncode == 0
    return min(seconds)


def kill_points(count: int, seconds: float, seed: int) -> np.ndarray:
    """``count`` moments in (0, seconds): one uniformly at random in each of ``count`` equal
    strata, so the kills spread over every phase of the ingest."""
    edges = np.linspace(0.0, seconds, count + 1)
    return np.random.default_rng(seed).uniform(edges[:-1], edges[1:])


def test_kill_points_are_seeded_and_stratified() -> None:
    points = kill_points(20, 10.0, seed=3)
    assert np.array_equal(points, kill_points(20, 10.0, seed=3))
    assert np.array_equal(np.floor(points / 0.5), np.arange(20))


def _kill_at_random_points(
    tmp_path: Path, archive: Path, count: int, seed: int, measure: int = 1
) -> None:
    base = _base_catalog(tmp_path)
    before = _state(base)
    seconds = _ingest_seconds(base, archive, tmp_path, runs=measure)
    killed: list[Path] = []
    for index, delay in enumerate(kill_points(count, seconds, seed)):
        db = tmp_path / f"killed-{index}.db"
        shutil.copy(base, db)
        process, opened = _start(db, archive)
        time.sleep(max(0.0, opened + delay - time.monotonic()))
        process.send_signal(signal.SIGKILL)
        process.wait()
        integrity, foreign, counts = _state(db)
        assert integrity == [("ok",)], (index, delay)
        assert foreign == [], (index, delay)
        datasets = [d.name for d in api.list_catalog(str(db)).datasets]
        if datasets == ["big", "small"]:
            # Killed after the commit (while printing its result): the version must be whole.
            assert api.overlap(str(db), ["big"]).splits[0].items == N_SMALL, (index, delay)
            continue
        assert (integrity, foreign, counts) == before, (index, delay)
        assert datasets == ["small"]
        killed.append(db)
    # Timing is measured, so a busy machine may commit a run early; most must be real kills.
    assert len(killed) >= count // 2 + 1, f"only {len(killed)} of {count} runs were killed"
    # The same ingest then succeeds, on the catalog killed latest into its run.
    rerun = subprocess.run(
        _ingest_command(killed[-1], archive), cwd=ROOT, env=_ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert api.overlap(str(killed[-1]), ["big"]).splits[0].items == N_SMALL
    integrity, foreign, _counts = _state(killed[-1])
    assert (integrity, foreign) == ([("ok",)], [])


N_SMALL = 2000


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingest of a few seconds: five kills fit the default run."""
    images, labels = synth.render_letters(N_SMALL, np.random.default_rng(11))
    path = tmp_path_factory.mktemp("crash-small") / "small.npz"
    np.savez(path, x_train=images, y_train=labels)
    return path


def test_sigkill_at_random_moments_leaves_catalog_unchanged(
    tmp_path: Path, small_archive: Path
) -> None:
    # Timed on the faster of two runs: a run slowed by the other test worker would spread the
    # kills past the commit of a run that is not.
    _kill_at_random_points(tmp_path, small_archive, count=5, seed=20261130, measure=2)


@pytest.mark.slow
def test_sigkill_at_many_random_moments_leaves_catalog_unchanged(
    tmp_path: Path, small_archive: Path
) -> None:
    _kill_at_random_points(tmp_path, small_archive, count=20, seed=8, measure=2)


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the child's file size. It runs in the forked child, where
    other threads' locks (an xdist worker has some) may be held: so it imports nothing and
    makes only the two system calls."""
    import resource

    def apply() -> None:
        # Writes past the limit fail with EFBIG instead of the signal killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_ingest_past_the_file_size_limit_is_one_clear_line_and_changes_nothing(
    tmp_path: Path, small_archive: Path
) -> None:
    pytest.importorskip("resource", reason="file size limits are POSIX")
    if not hasattr(signal, "SIGXFSZ"):
        pytest.skip("no SIGXFSZ on this platform")
    db = _base_catalog(tmp_path)
    checksum = hashlib.sha256(db.read_bytes()).hexdigest()
    before = _state(db)
    limit = 1_000_000  # the catalog is a few hundred KB; the ingest's log needs megabytes
    assert db.stat().st_size < limit
    failed = subprocess.run(
        _ingest_command(db, small_archive),
        cwd=ROOT,
        env=_ENV,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(limit),
    )
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), failed.stderr
    message = " ".join(failed.stderr.split())
    assert str(db) in message and "file size limit reached" in message, message
    assert "catalog is unchanged" in message
    assert hashlib.sha256(db.read_bytes()).hexdigest() == checksum
    assert _state(db) == before
    # With room again, the same ingest succeeds.
    rerun = subprocess.run(
        _ingest_command(db, small_archive), cwd=ROOT, env=_ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr


@pytest.mark.parametrize(
    ("name", "sqlstate", "expected"),
    [
        ("SQLITE_FULL", None, "disk full"),
        ("SQLITE_IOERR_WRITE", None, "disk I/O error"),
        ("", "53100", "disk full"),
        ("SQLITE_CONSTRAINT", None, None),
    ],
)
def test_storage_errors_are_recognised(
    tmp_path: Path, name: str, sqlstate: str | None, expected: str | None
) -> None:
    class Driver(Exception):
        sqlite_errorname = name

    Driver.sqlstate = sqlstate  # type: ignore[attr-defined]
    error = OperationalError("INSERT ...", {}, Driver("write failed"))
    found = storage_error(f"sqlite:///{tmp_path / 'c.db'}", error)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in str(found) and "c.db" in str(found)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a real full disk. Needs root (mount); skipped otherwise."""
    point = tmp_path / "disk"
    point.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_ingest_on_a_full_disk_is_one_clear_line_and_changes_nothing(
    small_disk: Path, small_archive: Path
) -> None:
    db = _base_catalog(small_disk)
    checksum = hashlib.sha256(db.read_bytes()).hexdigest()
    before = _state(db)
    failed = subprocess.run(
        _ingest_command(db, small_archive), cwd=ROOT, env=_ENV, capture_output=True, text=True
    )
    assert failed.returncode == 2, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), failed.stderr
    message = " ".join(failed.stderr.split())
    assert str(db) in message and "disk full" in message, message
    assert hashlib.sha256(db.read_bytes()).hexdigest() == checksum
    assert _state(db) == before


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
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_sigkill_mid_folder_ingest_leaves_catalog_unchanged_and_no_workers(
    tmp_path: Path, signum: int
) -> None:
    """SIGTERM (``docker stop``, a cancelled CI job) unwinds as Ctrl-C does: exit code 143,
    no traceback, and its workers stopped (it printed leaked semaphores before)."""
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
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
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
    process.send_signal(signum)
    code = process.wait()
    if signum == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM
        said = errors.read_text()
        assert "Traceback" not in said and "leaked" not in said, said
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in below):
        time.sleep(0.1)
    assert not [p for p in below if _running(p)], "decoding workers outlived the ingest"
    assert _state(db) == before
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert api.overlap(str(db), ["big"]).splits[0].items == 3000


def _interrupted_after_the_commit(monkeypatch: pytest.MonkeyPatch, signal_like: BaseException):
    """`write_retrying` that commits the ingest, then meets ``signal_like`` as a Ctrl-C or
    SIGTERM landing in the commit's return would be met."""
    import catalog.api
    from catalog.ingest import IngestResult

    real = catalog.api.write_retrying

    def committed_then_interrupted(engine, work):  # type: ignore[no-untyped-def]
        result = real(engine, work)
        if isinstance(result, IngestResult):  # the ingest's own transaction, committed
            raise signal_like
        return result

    monkeypatch.setattr(catalog.api, "write_retrying", committed_then_interrupted)


@pytest.mark.parametrize("signal_like", [KeyboardInterrupt(), SystemExit(143)], ids=["int", "term"])
def test_an_interrupt_after_the_commit_reports_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal_like: BaseException
) -> None:
    # Reported interrupted (exit 130 or 143), a committed version made the same command, run
    # again, fail as a version that exists; it is reported as ingested instead.
    from typer.testing import CliRunner

    from cli.app import app

    images = synth.render_letters(40, np.random.default_rng(3))[0]
    archive = tmp_path / "a.npz"
    np.savez(archive, x_train=images[:30], x_test=images[25:])
    _interrupted_after_the_commit(monkeypatch, signal_like)
    result = api.ingest(str(tmp_path / "c.db"), "d", "v1", archive)
    assert result.version == "v1" and api.list_catalog(str(tmp_path / "c.db")).datasets
    shown = CliRunner().invoke(
        app, ["--db", str(tmp_path / "d.db"), "ingest", "d", "v1", str(archive)]
    )
    assert shown.exit_code == 0, shown.output
    assert "Ingested d@v1" in shown.stdout
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # handlers given back


def test_an_interrupt_before_the_commit_still_stops_the_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = synth.render_letters(40, np.random.default_rng(3))[0]
    db = tmp_path / "c.db"

    def stop(_task: str, _advance: int, _total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.ingest(str(db), "d", "v1", {"train": images}, on_progress=stop)
    assert not api.list_catalog(str(db)).datasets
