"""Tests of the synthetic letters (catalog.synth) and the demo dataset (catalog.demo).

The demo's planted counts are the ground truth for the audit tests, so they are checked here three
ways: the plan's records, a brute force over the raw bytes, and direct looks at the arrays.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import demo, synth

SMALL = {"n_train": 200, "n_valid": 40, "n_test": 60}


@pytest.fixture(scope="module")
def default_demo() -> demo.Demo:
    return demo.make_demo()


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS difference on the 0-1 scale of matching images. (n, h, w) x2 -> (n,)."""
    diff = a.astype(np.float64) / 255 - b.astype(np.float64) / 255
    return np.sqrt((diff**2).mean(axis=(-2, -1)))


def _digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(str((array.dtype.str, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _all_arrays(d: demo.Demo) -> list[np.ndarray]:
    return [a for splits in d.versions.values() for pair in splits.values() for a in pair]


# --- render_letters ------------------------------------------------------------------------------


def test_render_letters_shapes_labels_and_ink() -> None:
    images, labels = synth.render_letters(500, np.random.default_rng(3))
    assert images.shape == (500, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (500,) and labels.dtype == np.dtype("<U1")
    assert set(labels.tolist()) == set(synth.LETTERS)
    # white glyph on black: a bright stroke and plenty of black in every image
    assert (images.max(axis=(1, 2)) >= 200).all()
    assert ((images == 0).mean(axis=(1, 2)) > 0.25).all()
    assert (images / 255).mean() < 0.3


def test_render_letters_20k_pairwise_distinct() -> None:
    images, _ = synth.render_letters(20_000, np.random.default_rng(0))
    assert len({image.tobytes() for image in images}) == 20_000


def test_render_letters_deterministic_and_seed_dependent() -> None:
    a = synth.render_letters(300, np.random.default_rng(7))
    b = synth.render_letters(300, np.random.default_rng(7))
    c = synth.render_letters(300, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_render_letters_same_bytes_in_a_fresh_process() -> None:
    # Glyph caches and Python's salted hash() must not leak into the pixels.
    code = (
        "import hashlib, numpy as np; from catalog import synth;"
        "im, lab = synth.render_letters(2000, np.random.default_rng(11));"
        "print(hashlib.sha256(im.tobytes() + lab.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    )
    im, lab = synth.render_letters(2000, np.random.default_rng(11))
    assert out.stdout.strip() == hashlib.sha256(im.tobytes() + lab.tobytes()).hexdigest()


def test_render_letters_edge_cases() -> None:
    images, labels = synth.render_letters(0, np.random.default_rng(0))
    assert images.shape == (0, 28, 28) and labels.shape == (0,)
    with pytest.raises(ValueError, match="n must be >= 0"):
        synth.render_letters(-1, np.random.default_rng(0))


# --- transforms ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def letters() -> np.ndarray:
    return synth.render_letters(64, np.random.default_rng(5))[0]


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: synth.gaussian_noise(x, 0.02, np.random.default_rng(0)),
        lambda x: synth.brightness(x, 0.05),
        lambda x: synth.contrast(x, 0.8),
        lambda x: synth.contrast(x, 1.2, around="mid"),
        lambda x: synth.shift(x, 1, -2),
        lambda x: synth.jpeg(x, 75),
        lambda x: synth.down_up(x, 2),
        synth.hflip,
    ],
)
def test_transforms_keep_shape_dtype_and_input(letters: np.ndarray, transform) -> None:
    before = letters.copy()
    out = transform(letters)
    assert out.shape == letters.shape and out.dtype == np.uint8
    assert np.array_equal(letters, before)  # never in place
    assert not np.array_equal(out, letters)


def test_transform_semantics(letters: np.ndarray) -> None:
    assert np.array_equal(synth.contrast(letters, 1.0), letters)
    assert np.array_equal(synth.brightness(letters, 0.0), letters)
    assert np.array_equal(synth.hflip(synth.hflip(letters)), letters)
    assert np.array_equal(synth.shift(letters, 0, 0), letters)
    moved = synth.shift(letters, 2, 1)  # right 2, down 1, zero fill
    assert np.array_equal(moved[:, 1:, 2:], letters[:, :-1, :-2])
    assert not moved[:, :1, :].any() and not moved[:, :, :2].any()
    assert not synth.shift(letters, 28, 0).any()
    assert (synth.brightness(letters, 1.0) == 255).all()
    assert np.array_equal(synth.gaussian_noise(letters, 0.0, np.random.default_rng(0)), letters)
    flat = synth.contrast(letters, 0.0)  # every pixel becomes its image's mean
    assert (flat.min(axis=(1, 2)) == flat.max(axis=(1, 2))).all()


@settings(max_examples=30, deadline=None)
@given(dx=st.integers(-30, 30), dy=st.integers(-30, 30))
def test_shift_matches_naive_loop(dx: int, dy: int) -> None:
    images = np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7) + 1
    expected = np.zeros_like(images)
    for y in range(5):
        for x in range(7):
            if 0 <= y - dy < 5 and 0 <= x - dx < 7:
                expected[:, y, x] = images[:, y - dy, x - dx]
    assert np.array_equal(synth.shift(images, dx, dy), expected)


def test_transforms_reject_bad_input(letters: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        synth.brightness(letters.astype(np.float32), 0.1)
    with pytest.raises(ValueError, match="quality"):
        synth.jpeg(letters, 0)
    with pytest.raises(ValueError, match="factor"):
        synth.down_up(letters, 1)
    with pytest.raises(ValueError, match="around"):
        synth.contrast(letters, 0.5, around="median")  # type: ignore[arg-type]


# --- the demo dataset ----------------------------------------------------------------------------


def test_demo_shapes_dtypes_and_read_only(default_demo: demo.Demo) -> None:
    sizes = {
        "v1": {"train": 2000, "valid": 300, "test": 300},
        "v2": {"train": 2000 - 26 + 50, "valid": 300, "test": 314},
    }
    assert list(default_demo.versions) == ["v1", "v2"]
    for tag, splits in default_demo.versions.items():
        assert tuple(splits) == demo.SPLITS
        for split, (images, labels) in splits.items():
            n = sizes[tag][split]
            assert images.shape == (n, 28, 28) and images.dtype == np.uint8
            assert labels.shape == (n,) and labels.dtype == np.dtype("<U1")
            assert set(labels.tolist()) <= set(synth.LETTERS)
            assert not images.flags.writeable and not labels.flags.writeable


def test_demo_is_deterministic() -> None:
    make = getattr(demo.make_demo, "__wrapped__", demo.make_demo)  # behind conftest's cache
    a = make(seed=4, **SMALL)
    b = make(seed=4, **SMALL)
    c = make(seed=5, **SMALL)
    assert _digest(_all_arrays(a)) == _digest(_all_arrays(b))
    assert a.planted == b.planted
    assert _digest(_all_arrays(a)) != _digest(_all_arrays(c))


def test_planted_exact_counts_match_brute_force(default_demo: demo.Demo) -> None:
    assert demo.planned_exact(default_demo) == demo.expected_exact(default_demo)


def test_planted_numbers_are_the_documented_ones(default_demo: demo.Demo) -> None:
    # The numbers the README and the audit tests quote; change them together.
    truth = demo.expected_exact(default_demo)
    assert truth["v1"].overlap == {
        ("train", "valid"): 9,
        ("train", "test"): 14,
        ("valid", "train"): 8,
        ("valid", "test"): 5,
        ("test", "train"): 15,
        ("test", "valid"): 5,
    }
    assert truth["v2"].overlap["test", "train"] == 23
    assert truth["v2"].overlap["train", "test"] == 22
    for tag in ("v1", "v2"):
        assert truth[tag].duplicate_groups == {"train": 10, "valid": 0, "test": 1}
        assert truth[tag].redundant_copies == {"train": 15, "valid": 0, "test": 1}
        assert truth[tag].conflicting_images == 5
    assert demo.expected_diff(default_demo) == demo.VersionDiff(
        removed=20, added=50, moved=6, leaked=8, relabelled_items=15
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_counts_hold_for_other_seeds_and_sizes(seed: int) -> None:
    d = demo.make_demo(seed=seed, **SMALL)
    assert demo.planned_exact(d) == demo.expected_exact(d)
    assert demo.planned_diff(d) == demo.expected_diff(d)


def test_smallest_demo_and_too_small() -> None:
    d = demo.make_demo(seed=0, n_train=124, n_valid=12, n_test=44)
    assert demo.planned_exact(d) == demo.expected_exact(d)
    with pytest.raises(ValueError, match="n_train must be at least 124"):
        demo.make_demo(n_train=123)
    with pytest.raises(ValueError, match="n_test must be at least 44"):
        demo.make_demo(n_test=43)


def test_planted_version_changes_match_brute_force(default_demo: demo.Demo) -> None:
    assert demo.planned_diff(default_demo) == demo.expected_diff(default_demo)


def test_low_info_items_are_the_planted_ones(default_demo: demo.Demo) -> None:
    for tag, splits in default_demo.versions.items():
        (record,) = default_demo.find("low_info", tag)
        images = splits["train"][0]
        spread = images.max(axis=(1, 2)).astype(int) - images.min(axis=(1, 2))
        flat = set(np.flatnonzero(spread <= 2).tolist())
        assert flat == set(record.positions) and len(flat) == record.count == 8
        blank = images[list(record.positions)]
        assert (blank == 0).all(axis=(1, 2)).sum() == 3
        assert (blank == 255).all(axis=(1, 2)).sum() == 1
        # nothing else in the version comes close to constant (2x down-up copies of thin
        # glyphs keep a spread of about 190)
        for _, (other, _) in splits.items():
            spread = other.max(axis=(1, 2)).astype(int) - other.min(axis=(1, 2))
            assert (spread > 100).sum() == len(other) - (8 if other is images else 0)


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_near_copies_are_close_but_not_identical(default_demo: demo.Demo, tag: str) -> None:
    train, train_labels = default_demo.versions[tag]["train"]
    test, test_labels = default_demo.versions[tag]["test"]
    records = default_demo.find("near_copy", tag)
    assert [r.transform for r in records] == list(demo.NEAR_TRANSFORMS)
    every = np.concatenate([im for im, _ in default_demo.versions[tag].values()])
    rows = every.reshape(len(every), -1)
    for record in records:
        assert record.count == len(record.pairs) == 5
        copies, sources = (np.array(p) for p in zip(*record.pairs, strict=True))
        assert np.array_equal(test_labels[copies], train_labels[sources])
        rms = _rms(test[copies], train[sources])
        assert (rms > 0).all()
        if record.transform in ("gaussian_noise", "brightness", "jpeg"):
            assert (rms < 0.1).all(), (record.transform, rms)
        # not byte-identical to any image of the version but itself
        for copy in test[copies]:
            assert (rows == copy.reshape(-1)).all(axis=1).sum() == 1


def test_no_unplanted_near_duplicates_between_test_and_train(default_demo: demo.Demo) -> None:
    # Brute force over all test x train pairs: within RMS 0.1 (and not identical), the only
    # test items close to train are planted near copies, and every noise, brightness and JPEG
    # copy is among them.
    train = default_demo.versions["v1"]["train"][0].reshape(2000, -1).astype(np.float64)
    test = default_demo.versions["v1"]["test"][0].reshape(300, -1).astype(np.float64)
    d2 = (test**2).sum(1)[:, None] + (train**2).sum(1)[None, :] - 2 * test @ train.T
    rms = np.sqrt(np.maximum(d2, 0) / 784) / 255
    close = set(np.flatnonzero(((rms > 0) & (rms < 0.1)).any(axis=1)).tolist())
    records = default_demo.find("near_copy", "v1")
    planted = {t for r in records for t, _ in r.pairs}
    must = {
        t
        for r in records
        if r.transform in ("gaussian_noise", "brightness", "jpeg")
        for t, _ in r.pairs
    }
    assert must <= close <= planted


def test_write_npz_round_trips(default_demo: demo.Demo, tmp_path: Path) -> None:
    paths = demo.write_npz(default_demo, tmp_path / "out")
    assert paths == {
        "v1": tmp_path / "out" / "notmnist_v1.npz",
        "v2": tmp_path / "out" / "notmnist_v2.npz",
    }
    for tag, path in paths.items():
        with np.load(path, allow_pickle=False) as data:
            assert sorted(data.files) == sorted(
                f"{s}_{k}" for s in demo.SPLITS for k in ("dataset", "labels")
            )
            for split, (images, labels) in default_demo.versions[tag].items():
                assert np.array_equal(data[f"{split}_dataset"], images)
                assert data[f"{split}_dataset"].dtype == np.uint8
                assert np.array_equal(data[f"{split}_labels"], labels)
                assert data[f"{split}_labels"].dtype == np.dtype("<U1")


def test_synth_and_demo_do_not_import_ui_libraries() -> None:
    for module in (synth, demo):
        tree = ast.parse(Path(module.__file__).read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert not names & {"typer", "rich", "click"}, module.__name__
