"""pixshift-v1: the shift-tolerant pixel recipe, its probe keys, and choosing recipes at ingest."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from catalog import api, synth
from catalog.demo import DemoRun
from catalog.errors import UsageError
from catalog.recipes import PIXEL_SHIFT, get_recipe
from catalog.recipes.shift import BLUR, PROBE_SHIFTS, SHIFTS, within_radius
from cli.app import app

from .test_recipes import golden_images, sha

R = PIXEL_SHIFT


def letters(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 28, 28) demo glyphs, shrunk into the middle 24x24 so 1-pixel shifts lose no ink."""
    images, _ = synth.render_letters(n, np.random.default_rng(seed))
    out = np.zeros_like(images)
    small = images.reshape(n, 14, 2, 14, 2).max(axis=(2, 4))  # 14x14 of the ink
    out[:, 7:21, 7:21] = small
    return out


def unit(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255)[..., None]


def naive_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The documented definition, with Python loops over the shifts and float64 arithmetic."""
    kernel = np.outer(BLUR, BLUR).astype(np.float64)
    h, w = a.shape

    def blur(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x.astype(np.float64), 2)
        return np.array(
            [[(padded[y : y + 5, z : z + 5] * kernel).sum() for z in range(w)] for y in range(h)]
        )

    ba, bb = blur(a), blur(b)
    best = np.inf
    for dy, dx in SHIFTS:
        total, cells = 0.0, 0
        for y in range(h):
            for x in range(w):
                if 0 <= y - dy < h and 0 <= x - dx < w:
                    total += (ba[y - dy, x - dx] - bb[y, x]) ** 2
                    cells += 1
        best = min(best, total / cells)
    return min(float(np.sqrt(best)) / (255 * 256), 1.0)


def test_golden_probe_keys() -> None:
    images = golden_images()
    assert {k: sha(R.probe_keys(R.signatures(v))) for k, v in images.items()} == {
        "gray28": "c48b485ebc1cc1ec",
        "rgb32": "c16042739e3d594a",
        "rgb50x70": "d010b1263cf8b2c9",
    }
    # The signature is pixel-v1's, byte for byte.
    for image in images.values():
        np.testing.assert_array_equal(R.signatures(image), get_recipe("pixel-v1").signatures(image))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
)
def test_distance_equals_the_naive_definition_and_is_symmetric(seed: int, h: int, w: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, (h, w)), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        b = synth.shift(b[None], int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))[0]
    sigs = R.signatures(unit(np.stack([a, b])))
    forward = R.distances(sigs[:1], sigs[1:])[0]
    assert forward == R.distances(sigs[1:], sigs[:1])[0]
    assert forward == R.verifier(sigs)(np.array([0]), np.array([1]))[0]
    assert abs(forward - naive_distance(a, b)) < 1e-12


def test_shifted_copies_are_at_distance_zero_and_found_by_probes() -> None:
    base = letters(200)
    sigs = R.signatures(unit(base))
    keys = R.band_keys(sigs)
    for dy, dx in PROBE_SHIFTS:
        moved = R.signatures(unit(synth.shift(base, dx, dy)))
        assert (R.distances(sigs, moved) == 0).all()
        assert not (R.band_keys(moved) == keys).any(axis=1).all()  # the code alone misses some
        probes = R.probe_keys(moved)
        assert (probes == keys[:, None, :]).any(axis=(1, 2)).all()


def test_probe_keys_are_the_band_keys_of_the_moved_grids() -> None:
    base = letters(30, seed=3)
    sigs = R.signatures(unit(base))
    probes = R.probe_keys(sigs)
    assert probes.shape == (30, 8, R.bands)
    for k, (dy, dx) in enumerate(PROBE_SHIFTS):
        np.testing.assert_array_equal(
            probes[:, k], R.band_keys(R.signatures(unit(synth.shift(base, dx, dy))))
        )


def test_planted_edits_are_within_the_threshold_and_distinct_letters_are_not() -> None:
    base = letters(300, seed=1)
    sigs = R.signatures(unit(base))
    for edited in (
        synth.down_up(base, 2),
        synth.gaussian_noise(base, 0.02, np.random.default_rng(2)),
        synth.brightness(base, 0.05),
        synth.jpeg(base, 75),
    ):
        assert (R.distances(sigs, R.signatures(unit(edited))) <= R.default_threshold).mean() > 0.97
    distinct, _ = synth.render_letters(400, np.random.default_rng(7))
    other = R.signatures(unit(distinct))
    assert (R.distances(other[:200], other[200:]) > R.radius).mean() > 0.97


@pytest.fixture(scope="module")
def all_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Letters with shifted and down-up copies, their signatures, every (i, j) and its distance
    (computed once: 36k pixshift distances take seconds)."""
    images, _ = synth.render_letters(150, np.random.default_rng(11))
    images = np.concatenate([images, synth.shift(images[:20], 1, -1), synth.down_up(images[:20])])
    sigs = R.signatures(unit(images))
    i, j = np.meshgrid(np.arange(len(images)), np.arange(len(images)), indexing="ij")
    return (
        images,
        sigs,
        np.stack([i.ravel(), j.ravel()]),
        R.distances(sigs[i.ravel()], sigs[j.ravel()]),
    )


@pytest.mark.parametrize("radius", [0.05, 0.08, 0.1, 0.15])
def test_brute_force_within_radius_equals_the_recipe_distances(
    radius: float, all_pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
) -> None:
    images, _, _, distances = all_pairs
    exact = distances.reshape(len(images), len(images)) <= radius
    close = within_radius(images, images, radius)  # one batch: half the shifts, transposed
    np.testing.assert_array_equal(close, exact)
    np.testing.assert_array_equal(within_radius(images, images.copy(), radius), exact)
    np.testing.assert_array_equal(within_radius(images[:50], images, radius), exact[:50])
    assert 40 < close.sum() - len(images) < 0.1 * close.size  # some pairs, not all
    with pytest.raises(ValueError, match="25x25 to 32x32"):
        within_radius(images[:, :24, :24], images[:, :24, :24], radius)


def test_the_verifier_equals_the_recipe_distances(
    all_pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    _, sigs, (i, j), distances = all_pairs
    np.testing.assert_array_equal(R.verifier(sigs)(i, j), distances)


def test_other_shapes_are_never_pairs() -> None:
    a = R.signatures(np.zeros((1, 28, 28, 1), np.float32))
    b = R.signatures(np.zeros((1, 28, 27, 1), np.float32))
    assert R.distances(a, b)[0] == 1.0


def test_a_new_recipe_is_refused_on_every_engine(db: str) -> None:
    api.ingest(db, "d", "v1", {"train": letters(10)})
    with pytest.raises(UsageError, match="never signed under pixshift-v1"):
        api.ingest(db, "d", "v2", {"train": letters(10, seed=1)}, recipes=["pixshift-v1"])
    assert [v.tag for d in api.list_catalog(db).datasets for v in d.versions] == ["v1"]
    assert sorted(r.name for r in api.list_recipes(db)) == ["phash256-v2", "pixel-v1"]


# --- choosing recipes at ingest ---------------------------------------------------------------


def pairs(db: str, recipe: str) -> int:
    return api.run_sql(
        db,
        "SELECT count(*) FROM pair p JOIN recipe r ON r.id = p.recipe_id "
        f"WHERE r.name = '{recipe}'",
    ).rows[0][0]


@pytest.mark.parametrize("copies_first", [False, True])
def test_ingest_with_pixshift_finds_shifted_copies_old_or_new(db: str, copies_first: bool) -> None:
    base = letters(60, seed=5)
    moved = synth.shift(base[:20], 1, 0)
    first, second = (moved, base) if copies_first else (base, moved)
    api.ingest(db, "d", "v1", {"train": first}, recipes=["pixel-v1", "pixshift-v1"])
    # Later ingests use the catalog's recipes without naming them.
    api.ingest(db, "d", "v2", {"test": second})
    assert pairs(db, "pixel-v1") == 0  # pixel-v1 does not see 1-pixel shifts of glyphs
    found = api.run_sql(
        db,
        "SELECT count(*) FROM pair p JOIN recipe r ON r.id = p.recipe_id "
        "WHERE r.name = 'pixshift-v1' AND p.distance = 0",
    ).rows[0][0]
    assert found == 20
    names = [r.name for r in api.list_recipes(db)]
    assert sorted(names) == ["pixel-v1", "pixshift-v1"]


def test_a_new_recipe_for_a_catalog_with_images_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    np.save(tmp_path / "a.npy", letters(10))
    runner = CliRunner()
    split = f"train={tmp_path / 'a.npy'}"
    done = runner.invoke(app, ["--db", str(db), "ingest", "d", "v1", "--split", split])
    assert done.exit_code == 0, done.output
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    refused = runner.invoke(
        app,
        ["--db", str(db), "ingest", "d", "v2", "--split", split, "--recipe", "pixshift-v1"],
    )
    assert refused.exit_code == 2
    assert "never signed under pixshift-v1" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM version").fetchone()[0] == 1
    unknown = runner.invoke(
        app, ["--db", str(tmp_path / "new.db"), "ingest", "d", "v1", "--split", split, "-r", "nope"]
    )
    assert unknown.exit_code == 2 and "unknown recipe 'nope'" in unknown.output
    with pytest.raises(UsageError, match="exact-only"):
        api.ingest(
            str(tmp_path / "x.db"), "d", "v1", {"t": letters(3)}, near=False, recipes=["pixel-v1"]
        )


def test_the_demo_finds_every_planted_near_copy_on_every_engine(demo_run: DemoRun) -> None:
    near = [c for c in demo_run.checks if "near copies" in c.finding]
    assert [c.finding.rsplit(": ", 1)[1] for c in near] == [
        "gaussian_noise",
        "brightness",
        "shift",
        "jpeg",
        "down_up",
    ]
    assert all(c.planted == c.found == 5 for c in near)
    assert all(c.ok for c in demo_run.checks)
