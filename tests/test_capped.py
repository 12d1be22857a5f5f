"""The blow-up guard's warning: an ingest keeps how many buckets went over the cap
(`near_ingest`), and every report whose near counts those ingests may have cut says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from catalog import api
from catalog.db import resolve_url
from catalog.schema import NearIngest, core_table
from cli.app import app
from tests.conftest import postgres_only

NOTE = "went over the blow-up guard"


def _copies(path: Path, rng: np.random.Generator, *, clustered: bool) -> Path:
    """train: 100 near copies of one picture (within 2 grey levels) and 40 others; test: one
    more copy and 20 others. ``clustered`` False: no copies, all distinct random pictures."""
    base = rng.integers(30, 226, (28, 28)).astype(np.int16)
    copies = np.clip(base + rng.integers(-2, 3, (101, 28, 28)), 0, 255).astype(np.uint8)
    if not clustered:
        copies = rng.integers(0, 256, (101, 28, 28), dtype=np.uint8)
    other = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    train, test = (
        np.concatenate([copies[:100], other[:40]]),
        np.concatenate([copies[100:], other[40:]]),
    )
    np.savez(
        path,
        train_images=train,
        train_labels=np.zeros(len(train), np.int64),
        test_images=test,
        test_labels=np.ones(len(test), np.int64),
    )
    return path


def _run(runner: CliRunner, db: str, *args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["--db", db, *args])
    assert result.exit_code == 0, result.output
    return result


def _words(text: str) -> str:
    """Terminal output with its line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def capped(db: str, runner: CliRunner, tmp_path: Path, rng: np.random.Generator) -> str:
    """A catalog holding ``plain@v1`` (nothing capped), then ``blobs@v1`` (101 near copies of
    one picture: every band of both default recipes holds a bucket over the cap)."""
    _run(
        runner, db, "ingest", "plain", "v1", str(_copies(tmp_path / "p.npz", rng, clustered=False))
    )
    _run(runner, db, "ingest", "blobs", "v1", str(_copies(tmp_path / "b.npz", rng, clustered=True)))
    return db


def test_the_ingest_keeps_what_it_printed(db: str, runner: CliRunner, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    path = _copies(tmp_path / "b.npz", rng, clustered=True)
    printed = json.loads(_run(runner, db, "ingest", "blobs", "v1", str(path), "--json").stdout)
    engine = create_engine(resolve_url(db))
    try:
        with engine.connect() as conn:
            table = core_table(NearIngest)
            kept = conn.execute(select(table).order_by(table.c.recipe_id)).mappings().all()
    finally:
        engine.dispose()
    assert [
        (r["images"], r["candidates"], r["pairs"], r["largest_bucket"], r["capped_buckets"])
        for r in kept
    ] == [
        (n["images"], n["candidates"], n["pairs"], n["largest_bucket"], n["capped_buckets"])
        for n in printed["near"]
    ]
    # Every band of both recipes holds the 101 copies: one bucket over the cap per band.
    assert all(n["capped_buckets"] >= 16 and n["largest_bucket"] >= 101 for n in printed["near"])


def test_reports_on_capped_splits_say_their_near_counts_may_be_lower_bounds(
    capped: str, runner: CliRunner, tmp_path: Path
) -> None:
    data = json.loads(_run(runner, capped, "overlap", "blobs", "--json").stdout)
    assert all(t["capped_buckets"] >= 16 for t in data["near"])
    # What the warning is about: 100 train items have a near copy in test, and the guard let
    # the band join find far fewer of them.
    leaked = [t["pairs"][0]["items"] for t in data["near"]]
    assert all(0 < n < 100 for n in leaked), leaked
    assert _words(_run(runner, capped, "overlap", "blobs").stdout).count(NOTE) == 2
    assert _words(_run(runner, capped, "conflicts", "blobs").stdout).count(NOTE) == 2
    # The report, in each format, and the gate that reads the near matrices.
    md, page, js = tmp_path / "r.md", tmp_path / "r.html", tmp_path / "r.json"
    args = ("--markdown", str(md), "--html", str(page), "--json", str(js))
    out = _run(runner, capped, "report", "blobs", "--max-leakage", "0.9", *args).stdout
    assert _words(out).count(NOTE) == 2
    assert md.read_text().count(NOTE) == 2 and page.read_text().count(NOTE) == 2
    report = json.loads(js.read_text())
    assert all(t["capped_buckets"] >= 16 for t in report["leaks"]["near"])
    (gate,) = report["gates"]
    assert "a lower bound" in gate["message"], gate
    recipes = {r["name"]: r for r in report["recipes"]}
    assert all(r["capped_buckets"] >= 16 and r["largest_bucket"] >= 101 for r in recipes.values())
    listed = _words(_run(runner, capped, "recipes").stdout)
    assert "over the blow-up guard's cap (largest" in listed


def test_splits_no_capping_ingest_could_touch_carry_no_warning(
    capped: str, runner: CliRunner, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Only the ingests that brought in an audited image can have stored its pairs: plain@v1
    came in before the capped ingest, after@v1 after it, and neither holds its images."""
    path = _copies(tmp_path / "a.npz", rng, clustered=False)
    printed = json.loads(_run(runner, capped, "ingest", "after", "v1", str(path), "--json").stdout)
    own = {"plain": [0, 0], "after": [n["capped_buckets"] for n in printed["near"]]}
    for ref, expected in own.items():
        data = json.loads(_run(runner, capped, "overlap", ref, "--json").stdout)
        assert [t["capped_buckets"] for t in data["near"]] == expected
        report = api.overlap(capped, [ref], limit=5)  # computed, not the stored report
        assert [t.capped_buckets for t in report.near] == expected
    assert "blow-up" not in _run(runner, capped, "overlap", "plain").stdout
    # Auditing with blobs counts the capped ingest; so does a version that reuses its images.
    both = api.overlap(capped, ["plain", "blobs"])
    assert all(t.capped_buckets >= 16 for t in both.near)
    _run(runner, capped, "ingest", "reuse", "v1", str(tmp_path / "b.npz"))
    assert all(t.capped_buckets >= 16 for t in api.overlap(capped, ["reuse"]).near)


def test_the_gate_message_is_a_lower_bound_when_any_tier_is_capped(capped: str) -> None:
    """The leak rate is the largest tier's: a capped tier that counts fewer could hold more."""
    from dataclasses import replace

    from catalog.report import leak_rate

    report = api.report(capped, "blobs")
    near = report.overlap.near
    for capped_tier in range(len(near)):
        tiers = tuple(
            replace(t, capped_buckets=17 if n == capped_tier else 0) for n, t in enumerate(near)
        )
        alone = replace(report, overlap=replace(report.overlap, near=tiers))
        pair = alone.overlap.pair("blobs@v1:train", "blobs@v1:test")
        assert leak_rate(alone, pair)[1].endswith(", may be a lower bound")
    clean = replace(
        report,
        overlap=replace(report.overlap, near=tuple(replace(t, capped_buckets=0) for t in near)),
    )
    pair = clean.overlap.pair("blobs@v1:train", "blobs@v1:test")
    assert "lower bound" not in leak_rate(clean, pair)[1]


def test_stored_and_computed_reports_agree_and_check_passes(capped: str, runner: CliRunner) -> None:
    stored = api.overlap(capped, ["blobs"])
    computed = api.overlap(capped, ["blobs"], limit=21)  # past the stored limit: computed
    assert [t.capped_buckets for t in stored.near] == [t.capped_buckets for t in computed.near]
    result = runner.invoke(app, ["--db", capped, "check", "--json"])
    assert result.exit_code == 0, result.output


def test_down_below_0008_and_back_loses_the_counts_and_nothing_else(
    capped: str, tmp_path: Path
) -> None:
    """Counts cannot be brought back: the downgrade drops them and the stored overlap reports
    that held them, reports over those images then say the count is unknown, and `check`
    stays clean."""
    from alembic import command

    from catalog.db import _alembic_config, open_catalog

    engine = open_catalog(capped)
    config = _alembic_config()
    try:
        for target in ("0007", "head"):
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                (command.downgrade if target == "0007" else command.upgrade)(config, target)
    finally:
        engine.dispose()
    assert list(api.run_sql(capped, "SELECT COUNT(*) FROM stored_report").rows) == [(0,)]
    # Unknown, not 0: the versions' ingests may have capped (these did).
    assert [t.capped_buckets for t in api.overlap(capped, ["blobs"]).near] == [None, None]
    assert [r.capped_buckets for r in api.list_recipes(capped)] == [None, None]
    # The largest bucket too: the downgrade dropped the ingests' (101 images or more), and a
    # 0 would claim no bucket ever held two images.
    assert [r.largest_bucket for r in api.list_recipes(capped)] == [None, None]
    assert api.check(capped).ok
    runner = CliRunner()
    data = json.loads(_run(runner, capped, "overlap", "blobs", "--json").stdout)
    assert [t["capped_buckets"] for t in data["near"]] == [None, None]
    assert (
        _words(_run(runner, capped, "overlap", "plain").stdout).count(
            "came in before dsaudit kept a count"
        )
        == 2
    )
    # A version ingested now keeps its count: its own images are known, older ones are not.
    path = _copies(tmp_path / "n.npz", np.random.default_rng(1), clustered=False)
    printed = json.loads(_run(runner, capped, "ingest", "new", "v1", str(path), "--json").stdout)
    own = [n["capped_buckets"] for n in printed["near"]]
    assert [t.capped_buckets for t in api.overlap(capped, ["new"]).near] == own
    assert [t.capped_buckets for t in api.overlap(capped, ["new", "plain"]).near] == [None, None]
    recipes = json.loads(_run(runner, capped, "recipes", "--json").stdout)["recipes"]
    assert [(r["capped_buckets"], r["largest_bucket"]) for r in recipes] == [(None, None)] * 2


@postgres_only
def test_an_ingest_beside_counts_when_its_images_are_reused(db: str) -> None:
    """On PostgreSQL an ingest that started later (a higher version id) can commit first, and
    one still running then reuses its images: its capped count applies to the reuser's
    splits (a rule by version id missed it)."""
    rng = np.random.default_rng(0)
    base = rng.integers(30, 226, (28, 28)).astype(np.int16)
    copies = np.clip(base + rng.integers(-2, 3, (101, 28, 28)), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    api.ingest(db, "base", "v1", {"train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)})
    beside: list[int] = []

    def run_the_other(_task: str, _advance: int, _total: int) -> None:
        if not beside:
            done = api.ingest(db, "b", "v1", {"train": copies[:100], "test": copies[100:]})
            beside.append(done.version_id)

    first = api.ingest(
        db,
        "a",
        "v1",
        # Its first split holds none of b's images: b runs (at a's first progress report)
        # before a adds any, or b would wait for a's transaction, and a for b.
        {
            "s1": other[:40],
            "train": copies[:100],
            "test": np.concatenate([other[40:], copies[100:]]),
        },
        on_progress=run_the_other,
    )
    assert beside and beside[0] > first.version_id  # b started later and committed first
    tiers = api.overlap(db, ["a"]).near
    assert all(t.capped_buckets is not None and t.capped_buckets >= 16 for t in tiers)


def test_diff_near_replacements_carry_the_warning_unless_exact(
    capped: str, runner: CliRunner, tmp_path: Path
) -> None:
    _run(runner, capped, "ingest", "blobs", "v2", str(tmp_path / "p.npz"))
    data = json.loads(_run(runner, capped, "diff", "blobs@v1", "blobs@v2", "--json").stdout)
    assert data["capped_buckets"] >= 16
    assert NOTE in _words(_run(runner, capped, "diff", "blobs@v1", "blobs@v2").stdout)
    exact = _run(runner, capped, "diff", "blobs@v1", "blobs@v2", "--exact", "--json").stdout
    assert json.loads(exact)["capped_buckets"] == 0
    assert "blow-up" not in _run(runner, capped, "diff", "blobs@v1", "blobs@v2", "--exact").stdout


def test_a_report_stored_before_0008_says_its_count_is_unknown(capped: str) -> None:
    """Stored overlap reports of format 1 hold no counts, and decoded they read 0: the
    warning vanished on exactly the catalogs whose ingests kept no count (review)."""
    from sqlalchemy import text

    engine = create_engine(resolve_url(capped))
    try:
        with engine.begin() as conn:
            for version_id, body in conn.execute(
                text("SELECT version_id, body FROM stored_report")
            ):
                data = json.loads(body)
                for tier in data["near"]:
                    del tier["capped_buckets"]
                conn.execute(
                    text("UPDATE stored_report SET format = 1, body = :b WHERE version_id = :v"),
                    {"b": json.dumps(data), "v": version_id},
                )
    finally:
        engine.dispose()
    for ref in ("plain", "blobs"):
        assert [t.capped_buckets for t in api.overlap(capped, [ref]).near] == [None, None]
    gate = api.report(capped, "blobs", max_leakage=0.99).gates[0]
    assert "may be a lower bound" in gate.message
    assert api.check(capped).ok
