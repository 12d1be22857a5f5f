"""``dsaudit check``: a clean catalog passes; each kind of damage, made with raw SQL on a copy of a
real catalog (or by changing a source file), is found by its check and makes the command exit 1.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog import api
from catalog.check import recipe_fingerprint
from catalog.demo import DemoRun
from cli.app import app


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalog ingested from an .npz on disk: near copies, blank images, two splits."""
    directory = tmp_path_factory.mktemp("check")
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, (120, 16, 16), dtype=np.uint8)
    test = rng.integers(0, 256, (30, 16, 16), dtype=np.uint8)
    test[:5] = np.clip(train[:5].astype(int) + 2, 0, 255)  # near copies across splits
    train[100:103] = 0  # low-information
    source = directory / "data.npz"
    np.savez(source, x_train=train, y_train=np.arange(120) % 10, x_test=test)
    db = directory / "template.db"
    api.ingest(str(db), "d", "v1", api.plan([source]))
    return db, source


@pytest.fixture
def catalog(template: tuple[Path, Path], tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    shutil.copy(template[0], db)
    return db


def _sql(db: Path, *statements: str) -> None:
    raw = sqlite3.connect(db)
    try:
        for statement in statements:
            raw.execute(statement)
        raw.commit()
    finally:
        raw.close()


def _results(db: Path, sample: int = 1000, seed: int = 0) -> dict[str, api.CheckResult]:
    return {r.name: r for r in api.check(str(db), sample=sample, seed=seed).results}


def test_a_clean_catalog_passes(catalog: Path) -> None:
    results = _results(catalog)
    assert {name: r.status for name, r in results.items()} == {
        "integrity": "ok",
        "foreign-keys": "ok",
        "orphans": "ok",
        "pair-order": "ok",
        "recipes": "ok",
        "signatures": "ok",
        "band-keys": "ok",
        "digests": "ok",
        "stored-reports": "ok",
    }
    assert results["stored-reports"].checked == 1  # d@v1's overlap report
    assert results["digests"].checked == 150  # every item, read back from data.npz
    assert results["recipes"].checked == 2
    # 147 distinct informative images (150 items, three of them one blank image), 2 recipes.
    assert results["signatures"].checked == 2 * 147
    assert results["pair-order"].checked and results["pair-order"].checked >= 5


def test_the_demo_catalog_passes_through_the_cli(runner: CliRunner, demo_run: DemoRun) -> None:
    result = runner.invoke(app, ["--db", str(demo_run.catalog), "check"])
    assert result.exit_code == 0, result.output
    assert "All checks passed" in result.stdout
    data = json.loads(runner.invoke(app, ["--db", str(demo_run.catalog), "check", "--json"]).stdout)
    assert data["schema"] == "dsaudit.check/1" and data["ok"] is True
    digests = next(r for r in data["results"] if r["name"] == "digests")
    assert digests["checked"] == 200 and digests["problems"] == 0


SIGNED = "(SELECT MIN(image_id) FROM signature)"
DAMAGE = {
    "orphan image": (
        [
            "INSERT INTO image (digest, height, width, channels, dtype, low_info) "
            "VALUES (zeroblob(32), 16, 16, 1, 'uint8', 0)"
        ],
        "orphans",
        "is held by no item",
    ),
    "signature of a missing image": (
        ["INSERT INTO signature (recipe_id, image_id, value) VALUES (1, 99999, x'00')"],
        "orphans",
        "signature of a missing image: image 99999",
    ),
    "signature of a missing recipe": (
        [f"INSERT INTO signature (recipe_id, image_id, value) VALUES (77, {SIGNED}, x'00')"],
        "orphans",
        "signature of a missing recipe",
    ),
    "band keys of a missing image": (
        ["INSERT INTO band_key (recipe_id, band, key, image_id) VALUES (1, 0, 42, 99999)"],
        "orphans",
        "band keys of a missing image: image 99999",
    ),
    "band keys of a missing recipe": (
        [f"INSERT INTO band_key (recipe_id, band, key, image_id) VALUES (77, 0, 42, {SIGNED})"],
        "orphans",
        "band keys of a missing recipe",
    ),
    "pair of a missing image": (
        ["INSERT INTO pair (recipe_id, image_a, image_b, distance) VALUES (1, 1, 99999, 0)"],
        "orphans",
        "pair with a missing image: images 1 and 99999",
    ),
    "pair of a missing recipe": (
        ["INSERT INTO pair (recipe_id, image_a, image_b, distance) VALUES (77, 1, 2, 0)"],
        "orphans",
        "pair of a missing recipe: images 1 and 2",
    ),
    "pair out of order": (
        [
            "PRAGMA ignore_check_constraints = ON",
            "INSERT INTO pair (recipe_id, image_a, image_b, distance) VALUES (1, 9, 4, 0.01)",
        ],
        "pair-order",
        "pair (9, 4) of recipe 1",
    ),
    "item of a missing split": (
        [
            "INSERT INTO item (split_id, position, image_id, label, source_id, source_key) "
            "VALUES (99, 0, 1, NULL, 1, 'x')"
        ],
        "foreign-keys",
        "a row of item refers to a missing split row",
    ),
    "recipe parameters edited": (
        ["UPDATE recipe SET params = json_set(params, '$.lsh.seed', 12345) WHERE id = 1"],
        "recipes",
        "stored fingerprint",
    ),
    "recipe column disagreeing with its parameters": (
        ["UPDATE recipe SET radius = 0.5 WHERE id = 2"],
        "recipes",
        "column radius is 0.5",
    ),
    "item whose row is not in its unchanged file": (
        ["UPDATE item SET source_row = 99999 WHERE position = 0"],
        "digests",
        "row 99999 is not in the file, which is unchanged since ingest",
    ),
    "item whose array is not in its unchanged file": (
        ["UPDATE item SET source_key = 'nope' WHERE position = 0"],
        "digests",
        "nope row 0 is not in the file",
    ),
    "signature cut short": (
        [f"UPDATE signature SET value = x'00' WHERE recipe_id = 2 AND image_id = {SIGNED}"],
        "signatures",
        "signature under phash256-v2 is 1 byte, not 32",
    ),
    "informative image never signed": (
        [f"DELETE FROM signature WHERE recipe_id = 2 AND image_id = {SIGNED}"],
        "signatures",
        "has no signature under phash256-v2",
    ),
    "band keys missing": (
        [f"DELETE FROM band_key WHERE image_id = {SIGNED} AND band < 3"],
        "band-keys",
        "of the",
    ),
    "low-information image with band keys": (
        [f"UPDATE image SET low_info = 1 WHERE id = {SIGNED}"],
        "band-keys",
        "is low-information but has band keys",
    ),
    "stored overlap report edited": (
        ["UPDATE stored_report SET body = json_set(body, '$.conflict_items', 999)"],
        "stored-reports",
        "d@v1: the stored overlap report differs from the one computed now (conflict_items)",
    ),
    "near pair deleted after its version's report was stored": (
        ["DELETE FROM pair WHERE recipe_id = 1"],
        "stored-reports",
        "differs from the one computed now (near)",
    ),
    "stored overlap report unreadable": (
        ["UPDATE stored_report SET body = '{\"splits\": []}'"],
        "stored-reports",
        "d@v1: the stored overlap report cannot be read",
    ),
    "digest that does not match the source": (
        ["UPDATE image SET digest = randomblob(32) WHERE id = 7"],
        "digests",
        "the catalog holds",
    ),
}


@pytest.mark.parametrize(("statements", "check", "fragment"), DAMAGE.values(), ids=list(DAMAGE))
def test_each_kind_of_damage_is_found(
    runner: CliRunner, catalog: Path, statements: list[str], check: str, fragment: str
) -> None:
    _sql(catalog, *statements)
    result = runner.invoke(app, ["--db", str(catalog), "check", "--sample", "1000", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False
    found = next(r for r in data["results"] if r["name"] == check)
    assert found["problems"] >= 1, found
    assert any(fragment in example for example in found["examples"]), found


def test_an_orphan_image_is_one_problem_not_also_an_unsigned_one(catalog: Path) -> None:
    # An image no item holds has no signature either; it is in no split, so no near finding
    # misses it, and `orphans` alone names it.
    _sql(catalog, *DAMAGE["orphan image"][0])
    results = _results(catalog)
    assert results["orphans"].problems == 1
    assert results["signatures"].problems == 0, results["signatures"].examples


def test_problems_are_listed_in_the_terminal(runner: CliRunner, catalog: Path) -> None:
    _sql(catalog, "UPDATE recipe SET radius = 0.5 WHERE id = 2")
    result = runner.invoke(app, ["--db", str(catalog), "check"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.stdout.split())
    assert "recipes 1 problem" in text and "recipes: recipe" in text
    assert text.endswith("1 problem found.")


def test_a_damaged_page_is_found_by_integrity(catalog: Path) -> None:
    # Garble the tail of the file (index and table pages), not page 1 (the schema).
    data = bytearray(catalog.read_bytes())
    page = 16384
    start = len(data) - 2 * page
    data[start + 100 : start + page] = bytes(range(256)) * ((page - 100) // 256) + bytes(
        (page - 100) % 256
    )
    catalog.write_bytes(bytes(data))
    results = _results(catalog)
    assert results["integrity"].status == "problems"


def test_a_source_file_changed_in_place_is_found_through_its_recorded_checksum(
    template: tuple[Path, Path], catalog: Path, tmp_path: Path
) -> None:
    # Pixels changed and the source row "updated" to match: the digests no longer agree.
    source = tmp_path / "data.npz"
    with np.load(template[1]) as archive:
        arrays = dict(archive)
    arrays["x_test"] = 255 - arrays["x_test"]
    np.savez(source, **arrays)
    from catalog.loaders.arrays import file_digest

    _sql(
        catalog,
        f"UPDATE source SET path = '{source}', sha256 = '{file_digest(source)}', "
        f"size = {source.stat().st_size}",
    )
    digests = _results(catalog)["digests"]
    assert digests.status == "problems" and digests.problems == 30
    assert "d@v1:test:" in digests.examples[0]


def test_a_source_changed_since_ingest_is_not_read_and_says_so(
    template: tuple[Path, Path], catalog: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "data.npz"
    shutil.copy(template[1], moved)
    _sql(catalog, f"UPDATE source SET path = '{moved}'")
    with moved.open("ab") as handle:
        handle.write(b"appended")
    digests = _results(catalog)["digests"]
    assert digests.status == "skipped" and "changed since ingest" in str(digests.skipped)
    _sql(catalog, "UPDATE source SET path = '/nonexistent/data.npz'")
    digests = _results(catalog)["digests"]
    assert digests.status == "skipped" and "whose source file is gone" in str(digests.skipped)
    # Counts are of sampled items, and never of more items than the catalog holds.
    assert re.search(r"^nothing re-readable: [\d,]+ items? whose source", str(digests.skipped))
    assert "200 sampled" not in digests.description
    # The terminal does not say "All checks passed." of digests it could not verify (the
    # stored reports list the old path in their conflicts: left out here).
    _sql(catalog, "DELETE FROM stored_report")
    shown = " ".join(CliRunner().invoke(app, ["--db", str(catalog), "check"]).stdout.split())
    assert "All checks passed." not in shown
    assert "All checks that ran passed; the digests were not verified" in shown


def test_the_sample_is_seeded(catalog: Path) -> None:
    _sql(catalog, "UPDATE image SET digest = randomblob(32) WHERE id = 7")
    found = {seed: _results(catalog, 20, seed)["digests"].problems for seed in range(12)}
    again = {seed: _results(catalog, 20, seed)["digests"].problems for seed in range(12)}
    assert found == again
    assert set(found.values()) == {0, 1}  # 20 of 150 items: some seeds draw image 7, some not


def test_recipe_fingerprint_matches_the_recipes_own() -> None:
    from catalog.recipes import DEFAULT_RECIPES

    for recipe in DEFAULT_RECIPES:
        assert recipe_fingerprint(json.dumps(recipe.params())) == recipe.fingerprint()


def test_check_user_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--db", str(tmp_path / "none.db"), "check"])
    assert result.exit_code == 2 and "no catalog here" in result.stderr
    result = runner.invoke(app, ["--db", str(tmp_path / "none.db"), "check", "--sample", "-1"])
    assert result.exit_code == 2
    for option, value in (("--seed", "-5"), ("--sample", str(2**63))):
        result = runner.invoke(app, ["--db", str(tmp_path / "none.db"), "check", option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.stderr
