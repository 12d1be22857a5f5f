"""The demo dataset: two versions of a notMNIST-like dataset with planted, counted problems.

This module owns the sample data behind ``dsaudit demo`` and the ground truth the audits are tested
against. :func:`make_demo` builds versions ``v1`` and ``v2`` (splits train / valid / test) from
:func:`catalog.synth.render_letters` and plants exact copies across splits, duplicate groups inside
train, conflicting labels, low-information images, near copies, and version-to-version changes.
Every planted problem is recorded as a :class:`Planted` with its exact count, stated in the terms
the reports use. Independently, :func:`expected_exact` and :func:`expected_diff` recompute the
exact findings by brute force over the raw bytes, so a test can hold the plan, the brute force
and the catalog's SQL answers to the same numbers.

What is planted (fixed counts, independent of the split sizes; v1 unless noted):

* train holds 8 low-information items: 3 all-zero (one duplicate group of 3), 1 all-255 and
  4 near-constant images (uniform noise in 2..4, pairwise different);
* train holds 6 duplicate groups of sizes 2, 2, 2, 3, 3, 4 with one label each, and 3 images
  that occur twice with two different labels (3 more groups of size 2);
* test copies 10 train images, 2 more train images under a different label, and 1 train image
  twice; valid copies 6 train images and one member of a size-2 train group; 4 valid images are
  copied into test; 1 image is in all three splits;
* test holds 25 near copies of train images (5 each of Gaussian noise sigma 0.02, brightness
  +0.05, a 1-pixel shift, JPEG quality 75, 2x BILINEAR down-up), none byte-identical to anything;
* v2 removes 20 train images, moves 6 train images to test, copies 8 train images into test
  (a new leak), relabels 15 train items and appends 50 new images to train.

All other images are distinct renders, and (by default) any two of them differ by at least 0.15
RMS on the 0-1 scale and lie beyond pixshift-v1's radius (0.1 after blurring, at every 1-pixel
shift), so near-duplicate searches within the recipes' radii find only what was planted. The demo
catalog is made with the default recipes and pixshift-v1 (`DEMO_RECIPES`), which finds the shifted
and down-up copies the defaults miss on 28x28 glyphs.
Items are shuffled within each v1 split; v2 keeps v1's order, drops removed and moved items and
appends its new items at the end of their split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path
from typing import TypeVar

import numpy as np

from catalog import synth
from catalog.errors import InputError
from catalog.ingest import IngestResult
from catalog.model import DiffReport, OverlapReport
from catalog.recipes import DEFAULT_RECIPES, PIXEL_SHIFT
from catalog.recipes.shift import within_radius

__all__ = [
    "SPLITS",
    "Demo",
    "NEAR_TRANSFORMS",
    "ExactCounts",
    "Planted",
    "VersionDiff",
    "expected_diff",
    "expected_exact",
    "make_demo",
    "planned_diff",
    "planned_exact",
    "write_npz",
]

K = TypeVar("K")

SPLITS = ("train", "valid", "test")
"""Split names of every demo version, in notMNIST's order."""
DEMO_RECIPES = (*(recipe.name for recipe in DEFAULT_RECIPES), PIXEL_SHIFT.name)
"""The recipes the demo catalog is made with (`dsaudit ingest --recipe`)."""

# --- the plan: fixed counts, so that reports and tests can name exact numbers ---------------
_DUP_GROUP_SIZES = (2, 2, 2, 3, 3, 4)
_TRAIN_CONFLICT_PAIRS = 3
_TEST_COPIES = 10
_TEST_CONFLICT_COPIES = 2
_VALID_COPIES = 6
_TEST_FROM_VALID = 4
_ZEROS = 3
_NEAR_CONSTANT = 4
_NEAR_PER_TRANSFORM = 5
_V2_REMOVED = 20
_V2_MOVED = 6
_V2_LEAKED = 8
_V2_RELABELLED = 15
_V2_ADDED = 50

# The near-copy transforms: name -> (description, function of (images, rng)).
_NEAR_TRANSFORMS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "gaussian_noise": ("Gaussian noise, sigma 0.02", lambda x, g: synth.gaussian_noise(x, 0.02, g)),
    "brightness": ("brightness +0.05", lambda x, g: synth.brightness(x, 0.05)),
    "shift": ("shift 1 pixel right", lambda x, g: synth.shift(x, 1, 0)),
    "jpeg": ("JPEG quality 75", lambda x, g: synth.jpeg(x, 75)),
    "down_up": ("2x BILINEAR down-up", lambda x, g: synth.down_up(x, 2)),
}

_LOW_INFO = _ZEROS + 1 + _NEAR_CONSTANT
# Items of train that are not singleton glyph images: groups, conflict pairs, low-info.
_TRAIN_SPECIAL = sum(_DUP_GROUP_SIZES) + 2 * _TRAIN_CONFLICT_PAIRS + _LOW_INFO
# Singleton train images given a role (copied, transformed, removed, ...); the rest stay plain.
_ROLES = {
    "test_copy": _TEST_COPIES,
    "test_conflict": _TEST_CONFLICT_COPIES,
    "test_double": 1,
    "valid_copy": _VALID_COPIES,
    "all_three": 1,
    "near": _NEAR_PER_TRANSFORM * len(_NEAR_TRANSFORMS),
    "v2_removed": _V2_REMOVED,
    "v2_moved": _V2_MOVED,
    "v2_leaked": _V2_LEAKED,
    "v2_relabelled": _V2_RELABELLED,
}
# Valid items that are copies: of train singletons, of one group member, the all-three image.
_VALID_SPECIAL = _VALID_COPIES + 1 + 1
# Test items that are copies or near copies of something else.
_TEST_SPECIAL = _TEST_COPIES + _TEST_CONFLICT_COPIES + 2 + 1 + _TEST_FROM_VALID + _ROLES["near"]
_MIN_TRAIN = _TRAIN_SPECIAL + sum(_ROLES.values())
_MIN_VALID = _VALID_SPECIAL + _TEST_FROM_VALID
_MIN_TEST = _TEST_SPECIAL


@dataclass(frozen=True)
class Planted:
    """One planted problem and its exact count, in the terms the audit reports use.

    Attributes:
        kind: one of ``exact_overlap`` (items of ``splits[0]`` whose image also occurs in
            ``splits[1]``), ``duplicate_groups`` / ``redundant_copies`` (images with more than one
            item in ``splits[0]``, and the sum of their item counts minus one),
            ``conflicting_labels`` (distinct images of the version carrying more than one label),
            ``low_info`` (blank or near-constant items), ``near_copy`` (items of ``splits[0]``
            that are transformed copies of items of ``splits[1]``), and the version changes
            ``removed``, ``moved``, ``leaked``, ``relabelled``, ``added`` (see
            :class:`VersionDiff`).
        version: the version the count holds in (``v1`` or ``v2``).
        splits: the split or ordered splits the count is about.
        count: the exact number.
        description: what was planted, for people.
        transform: for ``near_copy``, the transform's name (one of :data:`NEAR_TRANSFORMS`).
        pairs: for ``near_copy``, ``(position in splits[0], position in splits[1])`` of each
            copy and its original.
        positions: for ``low_info``, the position of each item in ``splits[0]``.
    """

    kind: str
    version: str
    splits: tuple[str, ...]
    count: int
    description: str
    transform: str | None = None
    pairs: tuple[tuple[int, int], ...] = ()
    positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class Demo:
    """The demo dataset.

    Attributes:
        seed: the seed it was made from.
        versions: ``{"v1": {"train": (images, labels), "valid": ..., "test": ...}, "v2": ...}``;
            images uint8 ``(n, 28, 28)``, labels ``'<U1'`` ``(n,)``, all read-only.
        planted: what was planted, with exact counts.
    """

    seed: int
    versions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    planted: list[Planted] = field(default_factory=list)

    def find(self, kind: str, version: str | None = None) -> list[Planted]:
        """The planted records of one kind, optionally of one version."""
        return [
            p for p in self.planted if p.kind == kind and (version is None or p.version == version)
        ]


@dataclass(frozen=True)
class ExactCounts:
    """Exact-duplicate findings of one version.

    Attributes:
        overlap: for each ordered pair ``(A, B)`` of distinct splits, the number of items of A
            whose image (same bytes) also occurs in B.
        duplicate_groups: per split, the number of images with more than one item in the split.
        redundant_copies: per split, the sum over those images of (items - 1).
        conflicting_images: distinct images of the version with more than one distinct label.
    """

    overlap: dict[tuple[str, str], int]
    duplicate_groups: dict[str, int]
    redundant_copies: dict[str, int]
    conflicting_images: int


@dataclass(frozen=True)
class VersionDiff:
    """How version B differs from version A, by image content.

    Attributes:
        removed: distinct images of A found nowhere in B.
        added: distinct images of B found nowhere in A.
        moved: images that left a split of A for another split of B: in A:S and B:T but not in
            B:S nor A:T, for some S != T.
        leaked: images that entered a split of B from another split of A and also stayed there:
            in A:S, B:S and B:T but not in A:T, for some S != T.
        relabelled_items: labelled items of B whose image carried labels in A (in any split),
            never the item's.
    """

    removed: int
    added: int
    moved: int
    leaked: int
    relabelled_items: int


NEAR_TRANSFORMS = tuple(_NEAR_TRANSFORMS)
"""Names of the transforms used for planted near copies, in planting order."""


def make_demo(
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 300,
    n_test: int = 300,
    min_rms: float = 0.15,
) -> Demo:
    """Build the demo dataset with planted problems (see the module docstring for the list).

    Args:
        seed: seeds the one ``np.random.default_rng`` every random choice is drawn from; the same
            seed and sizes give byte-identical arrays.
        n_train: items in v1 train, at least 124.
        n_valid: items in v1 valid (and v2 valid), at least 12.
        n_test: items in v1 test, at least 44; v2 test has 14 more.
        min_rms: the glyph images (everything but low-information images and near copies) are
            at least this RMS apart on the 0-1 scale, so unplanted near duplicates do not exist;
            checking it costs O(n^2) and is meant for demo sizes; 0 turns it off.

    Returns:
        The :class:`Demo`; v2 train has ``n_train - 26 + 50`` items.

    Raises:
        ValueError: if a split is too small to hold what is planted in it.
    """
    for name, n, least in (
        ("n_train", n_train, _MIN_TRAIN),
        ("n_valid", n_valid, _MIN_VALID),
        ("n_test", n_test, _MIN_TEST),
    ):
        if n < least:
            raise ValueError(f"{name} must be at least {least} to hold the planted cases, got {n}")
    if min_rms < 0:
        raise ValueError(f"min_rms must be >= 0, got {min_rms}")
    rng = np.random.default_rng(seed)

    n_train_plain = n_train - _TRAIN_SPECIAL
    n_valid_plain = n_valid - _VALID_SPECIAL
    n_test_plain = n_test - _TEST_SPECIAL
    n_glyphs = (
        n_train_plain
        + len(_DUP_GROUP_SIZES)
        + _TRAIN_CONFLICT_PAIRS
        + n_valid_plain
        + n_test_plain
        + _V2_ADDED
    )
    glyphs, glyph_labels = _separated_letters(n_glyphs, rng, min_rms)
    take = _Cursor()

    # Pool of distinct contents: glyphs, then blanks, then near copies; items refer to pool ids.
    train_plain = take(n_train_plain)
    groups = take(len(_DUP_GROUP_SIZES))
    conflicts = take(_TRAIN_CONFLICT_PAIRS)
    valid_plain = take(n_valid_plain)
    test_plain = take(n_test_plain)
    added = take(_V2_ADDED)
    assert take.next == n_glyphs

    zero_id = n_glyphs
    full_id = n_glyphs + 1
    near_constant_ids = n_glyphs + 2 + np.arange(_NEAR_CONSTANT)
    blanks = [np.zeros((1, 28, 28), np.uint8), np.full((1, 28, 28), 255, np.uint8)]
    # Uniform 3 +- 1: a scanner's black level, not quite constant; 784 draws make the four
    # images differ from each other (checked below with the rest of the pool).
    blanks.append(rng.integers(2, 5, (_NEAR_CONSTANT, 28, 28)).astype(np.uint8))

    roles: dict[str, np.ndarray] = {}
    chosen = rng.permutation(train_plain)
    start = 0
    for role, k in _ROLES.items():
        roles[role] = np.sort(chosen[start : start + k])
        start += k

    near_base = n_glyphs + 2 + _NEAR_CONSTANT
    near_ids: dict[str, np.ndarray] = {}
    near_sources: dict[str, np.ndarray] = {}
    near_images = []
    for t, (name, (_, transform)) in enumerate(_NEAR_TRANSFORMS.items()):
        sources = roles["near"][t * _NEAR_PER_TRANSFORM : (t + 1) * _NEAR_PER_TRANSFORM]
        near_images.append(transform(glyphs[sources], rng))
        near_ids[name] = near_base + t * _NEAR_PER_TRANSFORM + np.arange(_NEAR_PER_TRANSFORM)
        near_sources[name] = sources
    pool = np.concatenate([glyphs, *blanks, *near_images])
    _check_distinct(pool)
    # Blanks get their labels per item below; near copies keep their original's label.
    pool_labels = np.concatenate([glyph_labels, np.full(len(pool) - n_glyphs, "", dtype="<U1")])
    for name, ids in near_ids.items():
        pool_labels[ids] = glyph_labels[near_sources[name]]

    # --- v1 train ---
    zero_label = _random_letters(rng, 1)[0]
    train_ids = np.concatenate(
        [
            train_plain,
            np.repeat(groups, _DUP_GROUP_SIZES),
            conflicts,
            conflicts,
            np.full(_ZEROS, zero_id),
            [full_id],
            near_constant_ids,
        ]
    )
    train_labels = np.concatenate(
        [
            pool_labels[train_plain],
            np.repeat(pool_labels[groups], _DUP_GROUP_SIZES),
            pool_labels[conflicts],
            _other_letters(rng, pool_labels[conflicts]),
            np.full(_ZEROS, zero_label),
            _random_letters(rng, 1 + _NEAR_CONSTANT),
        ]
    )
    # --- v1 valid ---
    valid_ids = np.concatenate([valid_plain, roles["valid_copy"], groups[:1], roles["all_three"]])
    valid_labels = pool_labels[valid_ids]
    from_valid = np.sort(rng.choice(valid_plain, _TEST_FROM_VALID, replace=False))
    # --- v1 test ---
    test_ids = np.concatenate(
        [
            test_plain,
            roles["test_copy"],
            roles["test_conflict"],
            np.repeat(roles["test_double"], 2),
            roles["all_three"],
            from_valid,
            *near_ids.values(),
        ]
    )
    test_labels = pool_labels[test_ids]
    conflict_at = np.isin(test_ids, roles["test_conflict"])
    test_labels[conflict_at] = _other_letters(rng, test_labels[conflict_at])

    # Shuffle so that planted items are not bunched at the end of a split.
    v1: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, ids, labels in (
        ("train", train_ids, train_labels),
        ("valid", valid_ids, valid_labels),
        ("test", test_ids, test_labels),
    ):
        order = rng.permutation(len(ids))
        v1[split] = (ids[order], labels[order])

    # --- v2 from v1 ---
    train_ids1, train_labels1 = v1["train"]
    keep = ~np.isin(train_ids1, np.concatenate([roles["v2_removed"], roles["v2_moved"]]))
    train_ids2 = train_ids1[keep]
    train_labels2 = train_labels1[keep].copy()
    relabel_at = np.isin(train_ids2, roles["v2_relabelled"])
    train_labels2[relabel_at] = _other_letters(rng, train_labels2[relabel_at])
    train_ids2 = np.concatenate([train_ids2, added])
    train_labels2 = np.concatenate([train_labels2, pool_labels[added]])
    arrivals = rng.permutation(np.concatenate([roles["v2_moved"], roles["v2_leaked"]]))
    test_ids2 = np.concatenate([v1["test"][0], arrivals])
    test_labels2 = np.concatenate([v1["test"][1], pool_labels[arrivals]])
    v2 = {
        "train": (train_ids2, train_labels2),
        "valid": v1["valid"],
        "test": (test_ids2, test_labels2),
    }

    versions = {
        tag: {split: (_frozen(pool[ids]), _frozen(labels)) for split, (ids, labels) in v.items()}
        for tag, v in (("v1", v1), ("v2", v2))
    }
    planted = _plan_records(
        {"v1": v1, "v2": v2},
        near_ids=near_ids,
        near_sources=near_sources,
        low_info_ids=np.concatenate([[zero_id, full_id], near_constant_ids]),
    )
    return Demo(seed=seed, versions=versions, planted=planted)


def _plan_records(
    id_versions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    near_ids: dict[str, np.ndarray],
    near_sources: dict[str, np.ndarray],
    low_info_ids: np.ndarray,
) -> list[Planted]:
    """The :class:`Planted` records. Counts come from the plan's constants, not from the data;
    only item positions (after shuffling) are looked up in the id arrays."""
    g0 = _DUP_GROUP_SIZES[0]
    # items of A whose image is in B, per contributing plant (see the module docstring)
    overlap_v1 = {
        ("test", "train"): _TEST_COPIES + _TEST_CONFLICT_COPIES + 2 + 1,
        ("train", "test"): _TEST_COPIES + _TEST_CONFLICT_COPIES + 1 + 1,
        ("valid", "train"): _VALID_COPIES + 1 + 1,
        ("train", "valid"): _VALID_COPIES + g0 + 1,
        ("test", "valid"): _TEST_FROM_VALID + 1,
        ("valid", "test"): _TEST_FROM_VALID + 1,
    }
    why = {
        ("test", "train"): f"{_TEST_COPIES} train images copied into test, "
        f"{_TEST_CONFLICT_COPIES} more under a different label, 1 copied twice (2 items), "
        "1 image in all three splits",
        ("train", "test"): f"the same {_TEST_COPIES} + {_TEST_CONFLICT_COPIES} + 1 + 1 train "
        "images, each once in train",
        ("valid", "train"): f"{_VALID_COPIES} train images copied into valid, 1 member of a "
        "size-2 train group, 1 image in all three splits",
        ("train", "valid"): f"{_VALID_COPIES} copied train images, the size-2 group "
        f"({g0} items), 1 image in all three splits",
        ("test", "valid"): f"{_TEST_FROM_VALID} valid images copied into test, "
        "1 image in all three splits",
        ("valid", "test"): f"the same {_TEST_FROM_VALID} + 1 images, each once in valid",
    }
    groups = len(_DUP_GROUP_SIZES) + _TRAIN_CONFLICT_PAIRS + 1
    redundant = sum(s - 1 for s in _DUP_GROUP_SIZES) + _TRAIN_CONFLICT_PAIRS + _ZEROS - 1
    records: list[Planted] = []
    for version in ("v1", "v2"):
        overlap = dict(overlap_v1)
        if version == "v2":
            overlap["test", "train"] += _V2_LEAKED
            overlap["train", "test"] += _V2_LEAKED
        for (a, b), count in overlap.items():
            text = why[a, b]
            if version == "v2" and "train" in (a, b) and "test" in (a, b):
                text += f"; plus {_V2_LEAKED} v1 train images v2 copied into test"
            records.append(Planted("exact_overlap", version, (a, b), count, text))
        records += [
            Planted(
                "duplicate_groups",
                version,
                ("train",),
                groups,
                f"{len(_DUP_GROUP_SIZES)} same-label groups of sizes {_DUP_GROUP_SIZES}, "
                f"{_TRAIN_CONFLICT_PAIRS} images twice with different labels, "
                f"the {_ZEROS} all-zero images",
            ),
            Planted(
                "redundant_copies",
                version,
                ("train",),
                redundant,
                "sum of (size - 1) over the train duplicate groups",
            ),
            Planted("duplicate_groups", version, ("valid",), 0, "no duplicates inside valid"),
            Planted("redundant_copies", version, ("valid",), 0, "no duplicates inside valid"),
            Planted("duplicate_groups", version, ("test",), 1, "1 train image copied twice"),
            Planted("redundant_copies", version, ("test",), 1, "1 train image copied twice"),
            Planted(
                "conflicting_labels",
                version,
                SPLITS,
                _TRAIN_CONFLICT_PAIRS + _TEST_CONFLICT_COPIES,
                f"{_TRAIN_CONFLICT_PAIRS} images twice in train with different labels, "
                f"{_TEST_CONFLICT_COPIES} train images copied into test with a different label",
            ),
        ]
        train_ids = id_versions[version]["train"][0]
        test_ids = id_versions[version]["test"][0]
        low_pos = np.flatnonzero(np.isin(train_ids, low_info_ids))
        records.append(
            Planted(
                "low_info",
                version,
                ("train",),
                _LOW_INFO,
                f"{_ZEROS} all-zero items (one image), 1 all-255, "
                f"{_NEAR_CONSTANT} near-constant (uniform 2..4); "
                f"{_LOW_INFO - _ZEROS + 1} distinct images",
                positions=tuple(int(p) for p in low_pos),
            )
        )
        for name, ids in near_ids.items():
            pairs = tuple(
                (_position(test_ids, copy), _position(train_ids, source))
                for copy, source in zip(ids, near_sources[name], strict=True)
            )
            records.append(
                Planted(
                    "near_copy",
                    version,
                    ("test", "train"),
                    _NEAR_PER_TRANSFORM,
                    f"{_NEAR_PER_TRANSFORM} test items are train images after "
                    f"{_NEAR_TRANSFORMS[name][0]}; not byte-identical to any image",
                    transform=name,
                    pairs=pairs,
                )
            )
    records += [
        Planted("removed", "v2", ("train",), _V2_REMOVED, "v1 train images dropped from v2"),
        Planted(
            "moved",
            "v2",
            ("train", "test"),
            _V2_MOVED,
            "v1 train images that v2 moved into test (gone from train)",
        ),
        Planted(
            "leaked",
            "v2",
            ("train", "test"),
            _V2_LEAKED,
            "v1 train images that v2 also put into test (still in train): a new leak",
        ),
        Planted(
            "relabelled",
            "v2",
            ("train",),
            _V2_RELABELLED,
            "v1 train items (one image each) whose label v2 changed",
        ),
        Planted("added", "v2", ("train",), _V2_ADDED, "new images appended to v2 train"),
    ]
    return records


# --- ground truth by brute force ---------------------------------------------------------------


def expected_exact(demo: Demo) -> dict[str, ExactCounts]:
    """Exact-duplicate findings of every version, by brute force over the raw image bytes.

    Images are grouped with ``np.unique`` over the rows of all items of a version (every split,
    low-information images included), so this depends on nothing but the arrays.

    Returns:
        ``{version: ExactCounts}``.
    """
    out = {}
    for tag, splits in demo.versions.items():
        image_of, labels = _image_ids(splits)
        overlap = {
            (a, b): int(np.isin(image_of[a], image_of[b]).sum()) for a, b in permutations(splits, 2)
        }
        groups, redundant = {}, {}
        for split, ids in image_of.items():
            counts = np.unique(ids, return_counts=True)[1]
            groups[split] = int((counts > 1).sum())
            redundant[split] = int((counts - 1).sum())
        all_ids = np.concatenate(list(image_of.values()))
        all_labels = np.concatenate(list(labels.values()))
        label_codes = np.unique(all_labels, return_inverse=True)[1]
        image_label = np.unique(all_ids * (label_codes.max(initial=0) + 1) + label_codes)
        per_image = np.unique(image_label // (label_codes.max(initial=0) + 1), return_counts=True)
        conflicting = int((per_image[1] > 1).sum())
        out[tag] = ExactCounts(overlap, groups, redundant, conflicting)
    return out


def expected_diff(demo: Demo, a: str = "v1", b: str = "v2") -> VersionDiff:
    """How version ``b`` differs from version ``a``, by brute force over the raw image bytes.

    Returns:
        The :class:`VersionDiff` (definitions there).
    """
    tagged = {(tag, split): pair for tag in (a, b) for split, pair in demo.versions[tag].items()}
    ids, labels = _image_ids(tagged)
    contents = {
        tag: {split: set(ids[tag, split].tolist()) for split in demo.versions[tag]}
        for tag in (a, b)
    }
    every = {tag: set().union(*contents[tag].values()) for tag in (a, b)}
    moved, leaked = set(), set()
    for s in contents[a]:
        for t in contents[b]:
            if s == t or t not in contents[a] or s not in contents[b]:
                continue
            arrived = contents[a][s] & (contents[b][t] - contents[a][t])
            moved |= arrived - contents[b][s]
            leaked |= arrived & contents[b][s]
    labels_of: dict[str, dict[int, set[str]]] = {a: {}, b: {}}
    for (tag, split), item_ids in ids.items():
        for image, label in zip(item_ids.tolist(), labels[tag, split].tolist(), strict=True):
            labels_of[tag].setdefault(image, set()).add(label)
    carried = {image: found - {None} for image, found in labels_of[a].items()}
    relabelled = sum(  # labelled items of b whose image carried other labels in a, never theirs
        int(label is not None and bool(carried.get(image)) and label not in carried[image])
        for split in demo.versions[b]
        for image, label in zip(ids[b, split].tolist(), labels[b, split].tolist(), strict=True)
    )
    return VersionDiff(
        removed=len(every[a] - every[b]),
        added=len(every[b] - every[a]),
        moved=len(moved),
        leaked=len(leaked),
        relabelled_items=relabelled,
    )


def planned_exact(demo: Demo) -> dict[str, ExactCounts]:
    """The exact findings as the planted records state them; equals :func:`expected_exact`."""
    out = {}
    for tag in demo.versions:

        def count(kind: str, splits: tuple[str, ...], tag: str = tag) -> int:
            (record,) = [p for p in demo.find(kind, tag) if p.splits == splits]
            return record.count

        out[tag] = ExactCounts(
            overlap={
                (a, b): count("exact_overlap", (a, b))
                for a, b in permutations(demo.versions[tag], 2)
            },
            duplicate_groups={s: count("duplicate_groups", (s,)) for s in demo.versions[tag]},
            redundant_copies={s: count("redundant_copies", (s,)) for s in demo.versions[tag]},
            conflicting_images=count("conflicting_labels", SPLITS),
        )
    return out


def planned_diff(demo: Demo) -> VersionDiff:
    """The v1 -> v2 changes as the planted records state them; equals :func:`expected_diff`."""

    def count(kind: str) -> int:
        (record,) = demo.find(kind, "v2")
        return record.count

    return VersionDiff(
        removed=count("removed"),
        added=count("added"),
        moved=count("moved"),
        leaked=count("leaked"),
        relabelled_items=count("relabelled"),
    )


# --- files -----------------------------------------------------------------------------------


def write_npz(demo: Demo, directory: Path) -> dict[str, Path]:
    """Write each version as ``directory/notmnist_<version>.npz`` in the notMNIST naming.

    Keys: ``train_dataset, train_labels, valid_dataset, valid_labels, test_dataset,
    test_labels`` (images uint8 (n, 28, 28), labels '<U1' (n,)). No pickled objects, so the files
    load with ``allow_pickle=False``.

    Args:
        demo: the dataset to write.
        directory: created if missing; existing files of the same names are replaced.

    Returns:
        ``{"v1": path, "v2": path}``.
    """
    directory = Path(directory)
    paths = {}
    path = directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for tag, splits in demo.versions.items():
            arrays = {}
            for split, (images, labels) in splits.items():
                arrays[f"{split}_dataset"] = images
                arrays[f"{split}_labels"] = labels
            path = directory / f"notmnist_{tag}.npz"
            np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
            paths[tag] = path
    except OSError as exc:
        raise InputError(
            f"{path}: cannot write the demo's files there ({exc.strerror or exc}); "
            "give a directory that can be created or written"
        ) from None
    return paths


# --- helpers ---------------------------------------------------------------------------------


class _Cursor:
    """Hands out consecutive ranges of pool ids."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, k: int) -> np.ndarray:
        out = np.arange(self.next, self.next + k)
        self.next += k
        return out


def _separated_letters(
    n: int, rng: np.random.Generator, min_rms: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered letters, any two at least ``min_rms`` apart (RMS on the 0-1 scale) and,
    unless ``min_rms`` is 0, farther apart than pixshift-v1's radius
    (`catalog.recipes.shift.within_radius`).

    Renders a surplus and keeps candidates greedily in order. Squared distances are computed as
    float64 dot products of integer pixel values, which are exact (every partial sum is an
    integer below 2**53), so the kept set does not depend on the BLAS or the machine.

    Returns:
        images uint8 (n, 28, 28), labels '<U1' (n,).
    """
    if min_rms == 0:
        return synth.render_letters(n, rng)
    # Squared-difference sum threshold, compared exactly as integers.
    limit = (min_rms * 255) ** 2 * 28 * 28
    kept_images: list[np.ndarray] = []
    kept_labels: list[np.ndarray] = []
    kept = np.zeros((0, 28 * 28))
    kept_raw = np.zeros((0, 28, 28), np.uint8)
    while len(kept) < n:
        # Many candidates are rejected (most as 1-pixel neighbours of another render under
        # pixshift-v1), so each round renders a surplus.
        images, labels = synth.render_letters(max(64, (n - len(kept)) * 5 // 4), rng)
        x = images.reshape(len(images), -1).astype(np.float64)
        sq = (x * x).sum(axis=1)
        to_kept = sq[:, None] + (kept * kept).sum(axis=1)[None, :] - 2 * x @ kept.T
        within = sq[:, None] + sq[None, :] - 2 * x @ x.T
        close_to_kept = (to_kept < limit).any(axis=1)
        close_to_kept |= within_radius(images, kept_raw, PIXEL_SHIFT.radius).any(axis=1)
        close = (within < limit) | within_radius(images, images, PIXEL_SHIFT.radius)
        # Greedy, in order: a candidate is kept unless it is close to the kept set or to an
        # earlier candidate kept this round. Only candidates close to an earlier one depend on
        # what came before them, so only those are decided one at a time.
        free = ~close_to_kept
        earlier = np.tril(close, -1) & free[None, :]
        contested = earlier.any(axis=1)
        accepted = free & ~contested
        for i in np.flatnonzero(free & contested):
            accepted[i] = not (earlier[i] & accepted).any()
        kept = np.concatenate([kept, x[accepted]])
        kept_raw = np.concatenate([kept_raw, images[accepted]])
        kept_images.append(images[accepted])
        kept_labels.append(labels[accepted])
    return np.concatenate(kept_images)[:n], np.concatenate(kept_labels)[:n]


def _check_distinct(pool: np.ndarray) -> None:
    """Fail loudly if two pool contents are byte-identical (the counts would be off)."""
    rows = pool.reshape(len(pool), -1)
    if len(np.unique(rows, axis=0)) != len(pool):
        raise AssertionError("demo pool holds byte-identical images; the planted counts break")


def _random_letters(rng: np.random.Generator, k: int) -> np.ndarray:
    return np.array(list(synth.LETTERS), dtype="<U1")[rng.integers(0, len(synth.LETTERS), k)]


def _other_letters(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """For each label, a different letter drawn uniformly from the other nine."""
    index = np.searchsorted(np.array(list(synth.LETTERS)), labels)
    shifted = (index + rng.integers(1, len(synth.LETTERS), len(labels))) % len(synth.LETTERS)
    return np.array(list(synth.LETTERS), dtype="<U1")[shifted]


def _position(ids: np.ndarray, pool_id: int) -> int:
    """Position of the single item holding ``pool_id``."""
    (where,) = np.flatnonzero(ids == pool_id)
    return int(where)


def _image_ids(
    splits: Mapping[K, tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[K, np.ndarray], dict[K, np.ndarray]]:
    """Number the distinct images of the given (images, labels) pairs by their raw bytes.

    Returns:
        ``(image_of, labels)``: per key, the image number of each item (int64 (n,)) and its
        labels.
    """
    keys = list(splits)
    images = [np.ascontiguousarray(splits[k][0]) for k in keys]
    rows = np.concatenate([im.reshape(len(im), -1) for im in images])
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    bounds = np.cumsum([0] + [len(im) for im in images])
    image_of = {k: inverse[bounds[i] : bounds[i + 1]] for i, k in enumerate(keys)}
    labels = {k: np.asarray(splits[k][1]) for k in keys}
    return image_of, labels


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(array).copy()
    out.setflags(write=False)
    return out


# --- the end-to-end demo: ingest both versions, audit, compare with the plan -----------------

DEMO_DATASET = "notmnist"


@dataclass(frozen=True)
class DemoCheck:
    """One planted problem beside what the catalog's audit found."""

    finding: str
    planted: int
    found: int

    @property
    def ok(self) -> bool:
        return self.planted == self.found


@dataclass(frozen=True)
class DemoRun:
    """What `run_demo` did: files written, versions ingested, audits, and the checks."""

    directory: Path
    catalog: str
    """The catalog's path (``directory/demo.db``) or the URL it was given."""
    files: dict[str, Path]
    ingested: tuple[IngestResult, ...]
    reports: dict[str, OverlapReport]
    cross: OverlapReport
    diff: DiffReport
    checks: tuple[DemoCheck, ...]

    @property
    def all_found(self) -> bool:
        return all(check.ok for check in self.checks)


def _cross_version(demo: Demo, a: tuple[str, str], b: tuple[str, str]) -> int:
    """Items of ``a`` (version, split) whose bytes also occur in ``b``, by brute force."""
    ids, _labels = _image_ids({a: demo.versions[a[0]][a[1]], b: demo.versions[b[0]][b[1]]})
    return int(np.isin(ids[a], ids[b]).sum())


def run_demo(
    directory: Path,
    *,
    seed: int = 0,
    on_progress: Callable[[str, int, int], None] | None = None,
    db: str | None = None,
) -> DemoRun:
    """Write the demo's two versions as .npz, ingest them into ``directory/demo.db`` (made
    anew each run), audit them, and set every planted exact problem beside what was found.

    ``db`` names another catalog (a URL, e.g. an empty PostgreSQL database) to use instead.
    """
    from catalog import api  # the API imports loaders and db; keep `make_demo` light

    directory = Path(directory)
    demo = make_demo(seed=seed)
    files = write_npz(demo, directory)
    if db is None:
        path = directory / "demo.db"
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        db = str(path)
    ingested = tuple(
        api.ingest(
            db,
            DEMO_DATASET,
            tag,
            api.plan([path]),
            note=f"dsaudit demo, seed {seed}",
            on_progress=on_progress,
            recipes=DEMO_RECIPES,
        )
        for tag, path in files.items()
    )
    reports = {tag: api.overlap(db, [f"{DEMO_DATASET}@{tag}"]) for tag in files}
    cross_refs = (f"{DEMO_DATASET}@v1:train", f"{DEMO_DATASET}@v2:test")
    cross = api.overlap(db, cross_refs)

    checks: list[DemoCheck] = []
    planned = planned_exact(demo)
    for tag, report in reports.items():
        ref = f"{DEMO_DATASET}@{tag}"
        expected = planned[tag]
        for (a, b), count in expected.overlap.items():
            if count:
                found = report.pair(f"{ref}:{a}", f"{ref}:{b}").items
                checks.append(
                    DemoCheck(f"{tag}: {a} items with an exact copy in {b}", count, found)
                )
        within = {w.split.rsplit(":", 1)[1]: w for w in report.within}
        for split, groups in expected.duplicate_groups.items():
            if groups:
                checks.append(
                    DemoCheck(
                        f"{tag}: duplicate groups inside {split}", groups, within[split].groups
                    )
                )
                checks.append(
                    DemoCheck(
                        f"{tag}: redundant copies inside {split}",
                        expected.redundant_copies[split],
                        within[split].redundant,
                    )
                )
        checks.append(
            DemoCheck(
                f"{tag}: images with conflicting labels",
                expected.conflicting_images,
                report.conflict_images,
            )
        )
        for record in demo.find("low_info", tag):
            split = record.splits[0]
            checks.append(
                DemoCheck(
                    f"{tag}: low-information items in {split}",
                    record.count,
                    within[split].low_info_items,
                )
            )
    checks.extend(_near_checks(db, demo))
    diff = api.version_diff(db, f"{DEMO_DATASET}@v1", f"{DEMO_DATASET}@v2", exact_only=True)
    planned_changes = planned_diff(demo)
    checks.extend(
        [
            DemoCheck("v2: images removed", planned_changes.removed, diff.images_removed),
            DemoCheck("v2: images added", planned_changes.added, diff.images_added),
            DemoCheck(
                "v2: images moved to another split",
                planned_changes.moved,
                sum(m.moved for m in diff.moves),
            ),
            DemoCheck(
                "v2: images copied into another split (new leak)",
                planned_changes.leaked,
                sum(m.copied for m in diff.moves),
            ),
            DemoCheck(
                "v2: items relabelled",
                planned_changes.relabelled_items,
                diff.relabelled_items,
            ),
        ]
    )
    checks.append(
        DemoCheck(
            "v2: test items whose image is in v1 train",
            _cross_version(demo, ("v2", "test"), ("v1", "train")),
            cross.pair(cross_refs[1], cross_refs[0]).items,
        )
    )
    return DemoRun(
        directory=directory,
        catalog=db,
        files=files,
        ingested=ingested,
        reports=reports,
        cross=cross,
        diff=diff,
        checks=tuple(checks),
    )


def _near_checks(db: str, demo: Demo) -> list[DemoCheck]:
    """Planted near copies (test items transformed from train items) found by any recipe at
    its default threshold, one row per transformation."""
    from catalog import api

    found = {
        (row[0], row[1])
        for row in api.run_sql(
            db,
            "SELECT o.position_a, o.position_b FROM v_near_overlap o "
            "JOIN recipe r ON r.name = o.recipe "
            "WHERE o.distance <= r.default_threshold AND o.dataset_a = 'notmnist' "
            "AND o.version_a = 'v1' AND o.split_a = 'test' "
            "AND o.version_b = 'v1' AND o.split_b = 'train'",
        ).rows
    }
    checks = []
    for record in demo.find("near_copy", "v1"):
        hits = sum((test, train) in found for test, train in record.pairs)
        checks.append(
            DemoCheck(
                f"v1: test near copies of train: {record.transform}",
                record.count,
                hits,
            )
        )
    return checks
