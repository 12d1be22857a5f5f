"""dsaudit report: the model, its four renderings, the gates' exit codes, escaping, the caps.

The demo catalog (fixture ``demo_run``, built once per engine) is the ground truth: every
planted problem must show in every format, with the count the plan says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog import api, demo, queries, synth
from catalog.db import open_catalog
from catalog.demo import DemoRun
from catalog.errors import UsageError
from catalog.model import to_json
from catalog.report import REPORT_SCHEMA, FailOn, percent
from catalog.report_render import to_html, to_markdown
from cli.app import app

V1, V2 = "notmnist@v1", "notmnist@v2"


@pytest.fixture(scope="module")
def planted() -> demo.Demo:
    return demo.make_demo(seed=0)  # the seed run_demo used


def _db(run: DemoRun) -> str:
    return str(run.catalog)


def _exact_pairs(planted: demo.Demo, tag: str) -> list[tuple[str, str, int]]:
    counts = demo.planned_exact(planted)[tag].overlap
    return [(f"notmnist@{tag}:{a}", f"notmnist@{tag}:{b}", n) for (a, b), n in counts.items()]


def test_report_model_holds_every_planted_problem(demo_run: DemoRun, planted: demo.Demo) -> None:
    report = api.report(_db(demo_run), V1, pictures=True)
    expected = demo.planned_exact(planted)["v1"]
    for a, b, count in _exact_pairs(planted, "v1"):
        assert report.overlap.pair(a, b).items == count, (a, b)
    within = {w.split.rsplit(":", 1)[1]: w for w in report.overlap.within}
    for split, groups in expected.duplicate_groups.items():
        assert within[split].groups == groups
    assert report.overlap.conflict_images == expected.conflicting_images
    (low,) = planted.find("low_info", "v1")
    assert report.low_info.items == low.count == within["train"].low_info_items
    # Images shared across splits: each listed one really is in two or more splits.
    assert report.leaks.exact_images > 0
    assert all(len({i.split for i in m.items}) > 1 for m in report.leaks.exact)
    # Near copies planted in test (noise, brightness, JPEG at least) are near pairs across splits.
    found = {
        (p.b.items[0].position, p.a.items[0].position) for t in report.leaks.near for p in t.pairs
    }
    found |= {
        (p.a.items[0].position, p.b.items[0].position) for t in report.leaks.near for p in t.pairs
    }
    for record in planted.find("near_copy", "v1"):
        if record.transform in ("noise", "brightness", "jpeg"):
            assert set(record.pairs) <= found, record.transform
    assert report.summary.splits == 3 and report.summary.versions == 1
    assert report.summary.items == sum(s.items for s in report.overlap.splits)
    assert {r.name for r in report.recipes} == {t.recipe for t in report.overlap.near}
    assert report.gates == () and report.passed
    assert report.pictures and all(
        p.png and p.png[:8] == b"\x89PNG\r\n\x1a\n" for p in report.pictures
    )


def test_a_report_reads_items_and_pairs_once_and_equals_its_queries_run_alone(
    demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    for name in ("_read_audit", "_read_near_pairs"):
        real = getattr(queries, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            reads.append(_name)
            return _real(*args)

        monkeypatch.setattr(queries, name, counted)
    report = api.report(_db(demo_run), V2, against=[V1])
    # v2's items once (its overlap is the stored one; the diff reads its own way), and each
    # recipe's pairs among them once; alone, the sections read the items three times and the
    # first recipe's pairs twice.
    recipes = len(report.overlap.near)
    assert sorted(reads) == ["_read_audit"] + ["_read_near_pairs"] * recipes
    engine = open_catalog(_db(demo_run))
    try:
        with engine.connect() as conn:
            alone = (
                queries.cross_split_copies(conn, [V2]),
                queries.duplicate_groups(conn, [V2], recipe=report.overlap.near[0].recipe),
                queries.low_info_images(conn, [V2]),
                queries.distinct_images(conn, [V2]),
            )
    finally:
        engine.dispose()
    assert alone[0] == report.leaks
    assert alone[1].groups_total == report.duplicates.groups_total
    assert [
        g.members[: len(m.members)]
        for g, m in zip(alone[1].groups, report.duplicates.groups, strict=True)
    ] == [m.members for m in report.duplicates.groups]
    assert alone[2] == report.low_info
    assert alone[3] == report.summary.images


def test_report_against_an_older_version_holds_the_diff(
    demo_run: DemoRun, planted: demo.Demo
) -> None:
    report = api.report(_db(demo_run), V2, against=[V1])
    (diff,) = report.diffs
    changes = demo.planned_diff(planted)
    assert (diff.images_removed, diff.images_added) == (changes.removed, changes.added)
    assert sum(m.moved for m in diff.moves) == changes.moved
    assert sum(m.copied for m in diff.moves) == changes.leaked
    assert diff.relabelled_items == changes.relabelled_items
    # Each relabelled item with its image's labels in v1, none of them its label now.
    assert len(diff.labels_before) == len(diff.relabelled) > 0
    # "The first": the first relabelled items of v2 in split (id) and position order.
    v2 = {
        s.ref: n
        for n, s in enumerate(api.list_catalog(_db(demo_run)).datasets[0].versions[1].splits)
    }
    listed = [(v2[item.split], item.position) for item in diff.relabelled]
    assert listed == sorted(listed)
    assert all(
        before and item.label not in before
        for item, before in zip(diff.relabelled, diff.labels_before, strict=True)
    )
    assert [f"{v.dataset}@{v.tag}" for v in report.versions] == [V1, V2]


def test_json_has_the_schema_and_the_documented_keys(
    demo_run: DemoRun, runner: CliRunner, tmp_path: Path, planted: demo.Demo
) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["--db", _db(demo_run), "report", V1, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema"] == REPORT_SCHEMA == "dsaudit.report/1"
    assert set(data) == {
        "schema",
        "ref",
        "against",
        "created_at",
        "tool_version",
        "summary",
        "overlap",
        "leaks",
        "duplicates",
        "low_info",
        "diffs",
        "recipes",
        "versions",
        "gates",
        "limits",
    }
    pairs = {(p["a"], p["b"]): p["items"] for p in data["overlap"]["pairs"]}
    for a, b, count in _exact_pairs(planted, "v1"):
        assert pairs[(a, b)] == count
    assert data["overlap"]["conflict_images"] == 5 and data["low_info"]["items"] == 8
    assert set(data["leaks"]) == {"exact_images", "exact", "near"}
    assert set(data["summary"]) == {"datasets", "versions", "splits", "items", "images"}
    assert set(data["limits"]) == {"rows", "thumbnails", "thumbnail_pixels"}
    assert "pictures" not in data  # pictures are for the HTML only
    # --json - prints only the JSON on stdout (no terminal report), gates still apply.
    piped = runner.invoke(app, ["--db", _db(demo_run), "report", V1, "--json", "-"])
    assert piped.exit_code == 0 and json.loads(piped.stdout)["ref"] == V1


def test_markdown_is_short_and_shows_every_planted_problem(
    demo_run: DemoRun, planted: demo.Demo
) -> None:
    report = api.report(_db(demo_run), V2, against=[V1], max_leakage=0.05, fail_on=["exact"])
    text = to_markdown(report)
    assert len(text) < 20_000  # a pull-request comment, not a dump
    for a, b, count in _exact_pairs(planted, "v2"):
        if count:
            rate = report.overlap.pair(a, b).rate
            assert f"| {a} | {b} | {count} ({percent(rate)}) |" in text, (a, b)
    expected = demo.planned_exact(planted)["v2"]
    assert f"| images with more than one label | {expected.conflicting_images} |" in text
    assert "| low-information items | 8 |" in text
    assert "| redundant copies inside splits (exact) |" in text
    changes = demo.planned_diff(planted)
    assert (
        f"{changes.added} images added, {changes.removed} removed, {changes.moved} moved to "
        f"another split, {changes.leaked} copied into another split (new leaks), "
        f"{changes.relabelled_items} items relabelled" in text
    )
    assert "Gates **failed**" in text and "❌ `max-leakage`" in text and "❌ `exact`" in text
    assert re.search(r"_\d+ more images; the HTML report lists up to `--limit`._", text)


def test_html_shows_every_planted_problem_with_pictures(
    demo_run: DemoRun, planted: demo.Demo
) -> None:
    report = api.report(_db(demo_run), V2, against=[V1], pictures=True)
    page = to_html(report)
    for a, b, count in _exact_pairs(planted, "v2"):
        rate = report.overlap.pair(a, b).rate
        assert f"{count:,}<br><small>{percent(rate)}</small>" in page
    assert "5 images carry more than one label" in page
    assert "8 items (6 distinct images) are blank" in page
    changes = demo.planned_diff(planted)
    assert f"{changes.added} images added, {changes.removed} removed" in page
    assert f"{changes.relabelled_items} items carry other labels than before" in page
    first = report.diffs[0]
    assert "<th>labels before</th>" in page
    assert f'<td class="label">{", ".join(first.labels_before[0])}</td>' in page
    images = re.findall(r'<img class="thumb" src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)
    assert len(images) >= 50
    assert "http://" not in page and "https://" not in page and "<link" not in page
    # Every item links to its source file's entry, and that entry exists.
    anchors = set(re.findall(r'href="#(src-\d+)"', page))
    assert anchors and all(f'id="{a}"' in page for a in anchors)


def test_terminal_report_draws_the_findings(demo_run: DemoRun, runner: CliRunner) -> None:
    result = runner.invoke(app, ["--db", _db(demo_run), "report", V2, "--against", V1])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in (
        "Audit of notmnist@v2",
        "Exact leakage",
        "Near leakage (pixel-v1",
        "Copies across splits",
        "Near pairs across splits",
        "duplicate groups inside splits",
        "5 images carry more than one label",
        "Low-information items: 8",
        "notmnist@v1 -> notmnist@v2: 50 images added, 20 removed",
        "Recipes and thresholds",
    ):
        assert needle in out, needle
    assert re.search(r"[#%@]{3}", out)  # pictures, in characters: no colour here
    assert "Gates" not in out  # no gate asked, none shown


# --- gates and exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 0, ""),
        (["--max-leakage", "0.5"], 0, ""),
        (["--max-leakage", "0.05"], 1, "Gate tripped: max-leakage: notmnist@v1:test has"),
        (["--fail-on", "exact"], 1, "Gate tripped: exact:"),
        (["--fail-on", "near"], 1, "Gate tripped: near:"),
        (["--fail-on", "conflicts"], 1, "Gate tripped: conflicts: 5 images carry"),
        (["--fail-on", "low-info"], 1, "Gate tripped: low-info: 8 low-information items"),
        # Gates that could not trip whatever the data: refused, not passed.
        (["--exact", "--fail-on", "near"], 2, "--fail-on near needs near-duplicate recipes"),
        (["--exact", "--fail-on", "exact"], 1, "Gate tripped: exact:"),
        (["--max-leakage", "5"], 2, "--max-leakage 5 is not a rate"),
        (["--max-leakage", "-0.1"], 2, "is not a rate"),
        (["--fail-on", "typos"], 2, "Invalid value for '--fail-on'"),
        (["--limit", "-1"], 2, "Invalid value for '--limit'"),
        (["--limit", str(2**63)], 2, "Invalid value for '--limit'"),
        (["--json", "-", "--markdown", "-"], 2, "only one of --html, --json and --markdown"),
        (["--html", "/nonexistent/dir/r.html"], 2, "does not exist"),
        (["--html", "/tmp"], 2, "--html /tmp: is a directory"),
        (["--against", "notmnist@v9"], 2, "version 'notmnist@v9' is not in the catalog"),
    ],
)
def test_gate_exit_codes(
    demo_run: DemoRun, runner: CliRunner, args: list[str], code: int, message: str
) -> None:
    result = runner.invoke(app, ["--db", _db(demo_run), "report", V1, "--limit", "3", *args])
    assert result.exit_code == code, result.output
    if message:
        assert message in result.stderr
    if code == 2:
        # Refused before anything is printed or written.
        assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--max-leakage", "0.5"], 2, "--max-leakage compares splits, and this names one"),
        (["--fail-on", "exact"], 2, "--fail-on exact compares splits"),
        (["--fail-on", "near", "--max-leakage", "0"], 2, "--max-leakage and --fail-on near"),
        (["--fail-on", "conflicts"], 1, "Gate tripped: conflicts: 3 images carry"),
        (["--fail-on", "low-info"], 1, "Gate tripped: low-info: 8 low-information items"),
    ],
)
def test_gates_across_splits_refuse_one_split(
    demo_run: DemoRun, runner: CliRunner, args: list[str], code: int, message: str
) -> None:
    """On one split, a leakage gate measures nothing and would always pass; label and
    low-information gates still mean something there."""
    result = runner.invoke(app, ["--db", _db(demo_run), "report", f"{V1}:train", *args])
    assert result.exit_code == code, result.output
    if message:
        assert message in result.stderr
    if code == 2:
        assert "Traceback" not in result.output and result.stdout == ""


def test_report_files_that_would_overwrite_something_are_refused_first(
    demo_run: DemoRun, runner: CliRunner, tmp_path: Path
) -> None:
    """Two formats naming one file, or a file naming the catalog itself: refused before any
    query or output, every file as it was."""
    db = _db(demo_run)
    same = tmp_path / "r.json"
    cases = [
        (["--json", str(same), "--html", f"{tmp_path}/./r.json"], "--html and --json both name")
    ]
    if "://" not in db:  # a SQLite file, which a report file must not overwrite
        before = Path(db).read_bytes()
        cases += [
            (["--html", db], "is the catalog's own file"),
            (["--markdown", f"{db}-wal"], "is the catalog's own file"),
        ]
    for args, message in cases:
        result = runner.invoke(app, ["--db", db, "report", V1, *args])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert result.stdout == ""
    assert not same.exists()
    if "://" not in db:
        assert Path(db).read_bytes() == before


def test_a_tripped_gate_still_writes_every_file(
    demo_run: DemoRun, runner: CliRunner, tmp_path: Path
) -> None:
    files = {kind: tmp_path / f"r.{kind}" for kind in ("html", "json", "markdown")}
    args = [f"--{kind}={path}" for kind, path in files.items()]
    result = runner.invoke(
        app, ["--db", _db(demo_run), "report", V1, "--fail-on", "conflicts", *args]
    )
    assert result.exit_code == 1
    assert all(path.stat().st_size > 0 for path in files.values())
    gates = json.loads(files["json"].read_text())["gates"]
    assert gates == [
        {
            "gate": "conflicts",
            "limit": 0,
            "value": 5,
            "tripped": True,
            "message": "5 images carry more than one label",
        }
    ]


def test_a_clean_dataset_passes_every_gate(tmp_path: Path, runner: CliRunner) -> None:
    images, labels = synth.render_letters(120, np.random.default_rng(5))
    db = str(tmp_path / "clean.db")
    api.ingest(
        db, "clean", "v1", {"train": (images[:90], labels[:90]), "test": (images[90:], labels[90:])}
    )
    gates = ["--fail-on", "exact", "--fail-on", "near", "--fail-on", "conflicts"]
    result = runner.invoke(
        app, ["--db", db, "report", "clean", "--max-leakage", "0", *gates, "--fail-on", "low-info"]
    )
    assert result.exit_code == 0, result.output
    assert "tripped" not in result.stdout and result.stdout.count("passed") == 5


def test_gates_in_python(demo_run: DemoRun) -> None:
    report = api.report(_db(demo_run), V1, max_leakage=1.0, fail_on=[FailOn.LOW_INFO, "near"])
    assert [(g.gate, g.tripped) for g in report.gates] == [
        ("max-leakage", False),
        ("low-info", True),
        ("near", True),
    ]
    assert not report.passed
    # A gate's message leads with the number its value counts.
    (exact,) = api.report(_db(demo_run), V1, fail_on=["exact"]).gates
    assert exact.tripped and exact.message.startswith(f"{int(exact.value):,} exact copies across")
    with pytest.raises(UsageError, match="not a rate"):
        api.report(_db(demo_run), V1, max_leakage=1.5)
    with pytest.raises(ValueError):
        api.report(_db(demo_run), V1, fail_on=["everything"])


# --- limits, pictures, escaping ------------------------------------------------------------------


def test_limits_page_the_findings_and_cap_the_pictures(demo_run: DemoRun) -> None:
    report = api.report(_db(demo_run), V1, limit=2, thumbnails=3, pictures=True)
    assert len(report.leaks.exact) == 2 and report.leaks.exact_images > 2  # counts complete
    assert len(report.duplicates.groups) == 2 and report.duplicates.groups_total > 2
    assert len(report.pictures) == 3
    page = to_html(report)
    assert page.count('<img class="thumb"') == 3
    assert f"{report.leaks.exact_images - 2:,} more images not listed (--limit 2)" in page


def _hostile_catalog(tmp_path: Path) -> tuple[str, Path]:
    """Labels and a file name that are HTML, Markdown and quotes."""
    images, _ = synth.render_letters(12, np.random.default_rng(9))
    evil = '<script>alert("x")</script>'
    labels = np.array(["A", evil, "B' onerror='alert(1)", *"CDEFGHIJ", "|*_`"], dtype="<U40")
    train = np.concatenate([images[:10], images[:1], np.zeros((1, 28, 28), np.uint8)])
    path = tmp_path / "d\"<b>'x.npz"
    np.savez(path, x_train=train, y_train=labels, x_test=images[:2], y_test=labels[[1, 0]])
    db = str(tmp_path / "hostile.db")
    api.ingest(db, "h<i>", "v1", api.plan([path]))
    return db, path


def test_untrusted_text_is_escaped(tmp_path: Path) -> None:
    db, _path = _hostile_catalog(tmp_path)
    report = api.report(db, "h<i>", pictures=True)
    assert report.overlap.conflict_images == 2 and report.low_info.items == 1
    page = to_html(report)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)" in page
    assert "onerror='alert" not in page and "<b>" not in page and "<i>" not in page
    assert page.count("<script>") == 1  # the page's own sorting script
    text = to_markdown(report)
    # Code spans show HTML as text; an escaped backtick (label "|*_`") opens none.
    outside_code = re.sub(r"`[^`\n]*`", "", text.replace("\\`", ""))
    assert not re.search(r"<(script|b|i)>", outside_code) and "&lt;script&gt;" in outside_code
    assert "`d\"<b>'x.npz:x_train[0]`" in text


@pytest.mark.parametrize(
    ("value", "span"),
    [("plain", "`plain`"), ("te`st", "``te`st``"), ("`x``", "``` `x`` ```"), ("a  b", "`a b`")],
)
def test_code_spans_keep_backticks(value: str, span: str) -> None:
    """Backticks in a name were shown as quotes, so the name read wrong (QA)."""
    from catalog.report_render import code

    assert code(value) == span


def test_pictures_of_a_missing_source_are_placeholders(tmp_path: Path) -> None:
    db, path = _hostile_catalog(tmp_path)
    path.unlink()
    report = api.report(db, "h<i>", pictures=True)
    assert report.pictures and all(p.png is None for p in report.pictures)
    assert all("is gone or changed since ingest" in p.note for p in report.pictures)
    page = to_html(report)
    assert '<img class="thumb"' not in page and 'class="nopic"' in page


def test_to_json_leaves_pictures_out(demo_run: DemoRun) -> None:
    report = api.report(_db(demo_run), V1, limit=1, pictures=True)
    assert report.pictures
    assert "pictures" not in to_json(report, REPORT_SCHEMA)


def test_near_label_conflicts_not_listed_are_counted_in_images(tmp_path: Path) -> None:
    """A near conflict is a pair, the tier's count is of images: the pairs listed are counted
    by the images they show (a pair of two images listed in full said "1 more images")."""
    from catalog.model import ItemRef, NearConflict
    from catalog.report_render import images_in, to_markdown

    def side(position: int) -> tuple[ItemRef, ...]:
        return (ItemRef("d@v1:train", position, "x", "f.npy", "x", position),)

    pairs = [NearConflict(0.01, side(1), side(2)), NearConflict(0.02, side(1), side(3))]
    assert images_in(pairs[:1]) == 2 and images_in(pairs) == 3
    images, labels = synth.render_letters(30, np.random.default_rng(2))
    copy = synth.brightness(images[:1], 0.02)  # a near copy of image 0, labelled otherwise
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "v1", {"train": (np.concatenate([images, copy]), [*labels, "other"])})
    report = api.report(db, "d@v1")
    tier = next(t for t in report.overlap.near if t.recipe == "pixel-v1")
    assert tier.conflict_images == 2 and len(tier.conflicts) == 1
    section = to_html(report).split("Near copies labelled otherwise: pixel-v1")[1]
    assert "more images not listed" not in section.split("<h3>")[0]
    assert "more images" not in to_markdown(report)


def _one_of_each(db: str) -> None:
    """One exact copy across splits labelled otherwise, one near copy labelled otherwise."""
    images, labels = synth.render_letters(40, np.random.default_rng(8))
    test = np.concatenate([images[:1], synth.brightness(images[1:2], 0.02), images[30:]])
    api.ingest(
        db,
        "d",
        "v1",
        {"train": (images[:30], labels[:30]), "test": (test, ["z", "y", *labels[30:]])},
    )


def test_counts_of_one_are_singular_in_every_format(tmp_path: Path, runner: CliRunner) -> None:
    """One leaked image read "1 images occur in more than one split"."""
    db = str(tmp_path / "one.db")
    _one_of_each(db)
    report = api.report(db, "d")
    terminal = runner.invoke(app, ["--db", db, "report", "d"])
    assert terminal.exit_code == 0, terminal.output
    screen = " ".join(terminal.stdout.split())
    markdown, html = (" ".join(page.split()) for page in (to_markdown(report), to_html(report)))
    for text in (screen, html):
        assert "1 image occurs in more than one split" in text
        assert "1 image carries more than one label" in text
    assert "1 dataset, 1 version, 2 splits" in markdown
    for text in (screen, markdown, html):
        assert not re.search(r"\b1 (images|items|pairs|groups|exact copies)\b", text), text


@pytest.mark.parametrize("command", ["overlap", "conflicts", "report"])
def test_limit_0_lists_nothing_but_counts_everything(
    tmp_path: Path, runner: CliRunner, command: str
) -> None:
    """With --limit 0 a list's header row over no rows said nothing: its title and the note
    of how many are not listed stand in for it."""
    db = str(tmp_path / "one.db")
    _one_of_each(db)
    result = runner.invoke(app, ["--db", db, command, "d", "--limit", "0"])
    assert result.exit_code == 0, result.output
    screen = " ".join(result.stdout.split())
    assert "Label conflicts: 1 image carries more than one label (2 items)" in screen
    assert "(1 more conflicting image; --limit shows more)" in screen
    assert "images have a near copy with another label (2 more conflicting images;" in screen
    for header in ("distance item label near copy label", "image item label source"):
        assert header not in screen
    if command == "report":
        assert "1 image occurs in more than one split (1 more image;" in screen
        assert "image items where" not in screen


def test_arrays_in_memory_do_not_use_up_the_thumbnail_cap(tmp_path: Path) -> None:
    """Their placeholders counted against --thumbnails: files listed after them said "over
    the --thumbnails cap" though nothing had been read."""
    from catalog.loaders import from_memory

    images, labels = synth.render_letters(30, np.random.default_rng(6))
    db = str(tmp_path / "mixed.db")
    np.savez(tmp_path / "f.npz", x_test=images[:5])  # copies of train's first five
    splits = [*from_memory({"train": (images[:20], labels[:20])}), *api.plan([tmp_path / "f.npz"])]
    api.ingest(db, "d", "v1", splits)
    both = api.report(db, "d", thumbnails=1, pictures=True)
    memory = [p for p in both.pictures if "arrays in memory" in p.note]
    assert len(memory) == 5  # each exact leak's picture is of its train item, from memory
