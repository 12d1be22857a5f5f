"""Tests of catalog.loaders.arrays: which array of which file becomes which split, and how.

Every test writes real .npz/.npy/pickle files into ``tmp_path`` and goes through the public entry
points (`plan_arrays`, `parse_split_spec`, `from_memory`, `ImageArray.chunks`). Every refusal must
be an `InputError` whose one-line message names the file (and array) at fault.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.errors import InputError
from catalog.loaders import (
    MemoryArray,
    SplitInput,
    SplitSpec,
    from_memory,
    parse_split_spec,
    plan_arrays,
)
from catalog.loaders.arrays import NPY_MAGIC, NpzMember, file_digest


def images_of(rng: np.random.Generator, n: int, *rest: int) -> np.ndarray:
    return rng.integers(0, 256, (n, *(rest or (4, 5))), dtype=np.uint8)


def read_all(split: SplitInput, rows: int = 1000) -> np.ndarray:
    return np.concatenate(list(split.images.chunks(rows)))


def by_name(splits: list[SplitInput]) -> dict[str, SplitInput]:
    return {s.name: s for s in splits}


def refused(call, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """Run ``call``; it must raise InputError with a one-line message holding every fragment."""
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def npy_header(shape: tuple[int, ...], descr: str = "|u1", fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def corrupt_member(path: Path, member: str) -> None:
    """Flip bytes in the middle of one compressed member's data, leaving the zip readable."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(member) + len(info.extra) + info.compress_size // 2
    for i in range(start, start + 16):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------------------------
# recognising splits in an .npz


KEY_STYLES = {
    "keras": {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")},
    "keras-upper": {"train": ("X_train", "y_train"), "test": ("X_test", "Y_test")},
    "notmnist": {
        "train": ("train_dataset", "train_labels"),
        "valid": ("valid_dataset", "valid_labels"),
        "test": ("test_dataset", "test_labels"),
    },
    "bare": {"train": ("train", "train_labels"), "test": ("test", "test_labels")},
    "images-labels": {"train": ("train_images", "train_labels"), "test": ("test_images", None)},
    "x-y-suffix": {"train": ("train_x", "train_y"), "val": ("val_x", "val_y")},
}


@pytest.mark.parametrize("style", sorted(KEY_STYLES))
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_key_styles_become_named_splits_with_their_labels(
    tmp_path: Path, rng: np.random.Generator, style: str, compressed: bool
) -> None:
    layout = KEY_STYLES[style]
    arrays: dict[str, np.ndarray] = {}
    for i, (image_key, label_key) in enumerate(layout.values()):
        arrays[image_key] = images_of(rng, 6 + i)
        if label_key:
            arrays[label_key] = rng.integers(0, 10, 6 + i)
    path = tmp_path / f"{style}.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)

    splits = by_name(plan_arrays([path]))

    assert set(splits) == set(layout)
    for split, (image_key, label_key) in layout.items():
        found = splits[split]
        assert found.key == image_key
        np.testing.assert_array_equal(read_all(found), arrays[image_key])
        if label_key is None:
            assert found.labels is None
        else:
            assert found.labels is not None
            assert found.labels.tolist() == [str(v) for v in arrays[label_key]]


def test_source_file_records_path_format_and_size(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images_of(rng, 3))
    (split,) = plan_arrays([path])
    assert split.source.path == str(path)
    assert split.source.format == "npz"
    assert split.source.size == path.stat().st_size
    assert split.source.digested  # the ingest digests its bytes (test_ingest)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_file_digest_is_sha256_of_the_bytes_or_nothing_once_stopped(
    tmp_path: Path, size: int
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    stop = threading.Event()
    stop.set()
    assert file_digest(path, stop) == ("" if size else hashlib.sha256(b"").hexdigest())


def test_splits_from_two_archives_are_combined(tmp_path: Path, rng: np.random.Generator) -> None:
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x_train=images_of(rng, 4))
    np.savez(test, x_test=images_of(rng, 2))
    splits = by_name(plan_arrays([train, test]))
    assert {name: s.source.path for name, s in splits.items()} == {
        "train": str(train),
        "test": str(test),
    }


def test_rgb_images_are_recognised(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "cifar.npz"
    images = images_of(rng, 5, 8, 8, 3)
    np.savez(path, x_train=images, y_train=np.arange(5))
    (split,) = plan_arrays([path])
    assert split.images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(read_all(split, rows=2), images)


# ---------------------------------------------------------------------------------------------
# labels


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([3, 0, 9]), ["3", "0", "9"]),
        (np.array([3, 0, 9], dtype=np.uint8), ["3", "0", "9"]),
        (np.array([-1, 0, 1], dtype=np.int16), ["-1", "0", "1"]),
        (np.array(["cat", "dog", "émeu"]), ["cat", "dog", "émeu"]),
        (np.array([b"cat", b"dog", b"A"]), ["cat", "dog", "A"]),
        (np.array([True, False, True]), ["True", "False", "True"]),
        (np.array([1.0, 0.0, 7.0], dtype=np.float32), ["1", "0", "7"]),
        (np.array([-2.0, -0.0, 9.0]), ["-2", "0", "9"]),
    ],
)
def test_labels_become_strings(
    tmp_path: Path, rng: np.random.Generator, labels: np.ndarray, expected: list[str]
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 3), y_train=labels)
    (split,) = plan_arrays([path])
    assert split.labels is not None
    assert split.labels.dtype.kind == "U"
    assert split.labels.tolist() == expected


def test_column_labels_given_explicitly_are_flattened(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "cifar.npz"
    np.savez(path, x_train=images_of(rng, 4), y_train=np.array([[1], [2], [3], [4]]))
    (split,) = plan_arrays([path], [parse_split_spec("train=x_train:y_train")])
    assert split.labels is not None
    assert split.labels.tolist() == ["1", "2", "3", "4"]


def test_column_labels_are_paired_automatically(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "cifar.npz"
    np.savez(path, x_train=images_of(rng, 4), y_train=np.array([[1], [2], [3], [4]]))
    (split,) = plan_arrays([path])
    assert split.labels is not None
    assert split.labels.tolist() == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (np.zeros((4, 10)), "labels must be a 1-D array of 4 values"),
        (np.arange(5), "labels must be a 1-D array of 4 values"),
        (np.arange(3), "labels must be a 1-D array of 4 values"),
        (np.array([0.0, 1.5, 2.0, 3.0]), "float labels must be whole numbers"),
        (np.array([0.0, np.nan, 2.0, 3.0]), "float labels must be whole numbers"),
        (np.array([0.0, np.inf, 2.0, 3.0]), "float labels must be whole numbers"),
        (np.zeros(4, dtype=np.complex64), "labels must be integers or strings"),
        (np.array([b"a", 1, 2, 3], dtype=object), "labels must be integers or strings"),
    ],
)
def test_bad_labels_named_explicitly_are_refused(
    tmp_path: Path, rng: np.random.Generator, labels: np.ndarray, problem: str
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 4), bad=labels)
    refused(
        lambda: plan_arrays([path], [parse_split_spec("train=x_train:bad")], allow_pickle=True),
        str(path),
        "'bad'",
        problem,
    )


def test_fractional_float_labels_found_automatically_are_refused(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 3), y_train=np.array([0.5, 1.0, 2.0]))
    refused(lambda: plan_arrays([path]), str(path), "'y_train'", "whole numbers")


@pytest.mark.parametrize("labels", [np.arange(5), np.eye(4)], ids=["wrong-length", "one-hot"])
def test_misshapen_label_twin_found_automatically_is_refused(
    tmp_path: Path, rng: np.random.Generator, labels: np.ndarray
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 4), y_train=labels)
    refused(lambda: plan_arrays([path]), str(path), "'y_train'")


def test_whole_float_labels_beyond_int64_are_not_corrupted(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 2), y_train=np.array([1e20, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            (split,) = plan_arrays([path])
        except InputError:
            return
    assert split.labels is not None
    assert split.labels.tolist() == ["100000000000000000000", "1"]


# ---------------------------------------------------------------------------------------------
# archives whose splits cannot be told


def test_ambiguous_archive_lists_its_arrays_and_suggests_split(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((3, 4, 5), np.uint8), labels=np.arange(3))
    refused(
        lambda: plan_arrays([path]),
        str(path),
        "images 3x4x5 uint8",
        "labels 3 int64",
        "--split NAME=ARRAY[:LABELS]",
    )


def test_archive_without_image_arrays_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.npz"
    np.savez(path, features=np.zeros((3, 784)), target=np.arange(3), scalar=np.float64(1.0))
    refused(
        lambda: plan_arrays([path]),
        str(path),
        "no image arrays",
        "features 3x784 float64",
        "scalar scalar float64",
    )


def test_empty_archive_is_refused(tmp_path: Path) -> None:
    # An empty zip starts with the end-of-directory record (PK\x05\x06), not PK\x03\x04.
    path = tmp_path / "empty.npz"
    np.savez(path)
    refused(lambda: plan_arrays([path]), str(path), "no image arrays", "arrays: none")


def test_archive_of_labels_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.npz"
    np.savez(path, y_train=np.arange(3))
    refused(lambda: plan_arrays([path]), str(path), "no image arrays", "y_train 3 int64")


def test_same_split_from_two_archives_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(first, x_train=images_of(rng, 2))
    np.savez(second, train_images=images_of(rng, 2))
    refused(
        lambda: plan_arrays([first, second]),
        "split 'train'",
        f"{first}:x_train",
        f"{second}:train_images",
        "--split",
    )


def test_same_split_twice_in_one_archive_is_refused(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, x_train=images_of(rng, 2), train_images=images_of(rng, 2))
    refused(lambda: plan_arrays([path]), "split 'train'", "x_train", "train_images")


def test_no_sources_is_refused() -> None:
    refused(lambda: plan_arrays([]), "no source files")


def test_lone_npy_without_split_asks_for_split(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "x.npy"
    np.save(path, images_of(rng, 2))
    refused(lambda: plan_arrays([path]), str(path), "--split NAME=FILE.npy")


def test_image_array_with_no_images_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, x_train=np.zeros((0, 4, 4), np.uint8))
    refused(lambda: plan_arrays([path]), str(path), "'x_train'", "no images")


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (np.zeros((2, 4, 4, 5), np.uint8), "5 channels"),
        (np.zeros((2, 4, 4, 3, 2), np.uint8), "(2, 4, 4, 3, 2)"),
        (np.zeros((2, 4, 4), np.complex64), "complex64"),
        (np.zeros((2, 0, 4), np.uint8), "no pixels"),
    ],
)
def test_unsupported_image_arrays_are_refused_naming_file_and_array(
    tmp_path: Path, images: np.ndarray, problem: str
) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, x_train=images)
    refused(lambda: plan_arrays([path]), f"{path}: array 'x_train'", problem)


# ---------------------------------------------------------------------------------------------
# --split NAME=ARRAY[:LABELS]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train=x_train:y_train", SplitSpec("train", "x_train", "y_train")),
        ("train=x_train", SplitSpec("train", "x_train", None)),
        (" test =images", SplitSpec("test", "images", None)),
        ("dev=/data/x.npy:/data/y.npy", SplitSpec("dev", "/data/x.npy", "/data/y.npy")),
        ("a=b=c", SplitSpec("a", "b=c", None)),
    ],
)
def test_parse_split_spec(text: str, expected: SplitSpec) -> None:
    assert parse_split_spec(text) == expected


# "train=x_train:" would be a split without labels where some were meant (`x:$LABELS` with the
# variable unset): refused like "train=:y".
@pytest.mark.parametrize(
    "text", ["train", "", "=x_train", "  =x_train", "train=", "train=:y", "train=x_train:"]
)
def test_parse_split_spec_refuses_malformed_text(text: str) -> None:
    refused(lambda: parse_split_spec(text), f"--split {text!r}")


def test_explicit_split_names_an_array_key(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    images = images_of(rng, 4)
    np.savez(path, images=images, classes=np.array(["a", "b", "a", "c"]))
    (split,) = plan_arrays([path], [parse_split_spec("everything=images:classes")])
    assert (split.name, split.key) == ("everything", "images")
    assert split.labels is not None
    assert split.labels.tolist() == ["a", "b", "a", "c"]
    np.testing.assert_array_equal(read_all(split, rows=3), images)


def test_explicit_splits_override_recognition(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 4), x_test=images_of(rng, 2))
    splits = plan_arrays([path], [parse_split_spec("holdout=x_test")])
    assert [(s.name, s.key, s.labels) for s in splits] == [("holdout", "x_test", None)]


def test_explicit_split_with_npy_images_and_labels(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    images_path, labels_path = tmp_path / "x.npy", tmp_path / "y.npy"
    images = images_of(rng, 5)
    np.save(images_path, images)
    np.save(labels_path, np.array([4, 3, 2, 1, 0]))
    spec = parse_split_spec(f"train={images_path}:{labels_path}")
    (split,) = plan_arrays([], [spec])
    assert split.key == "x.npy"
    assert split.source.format == "npy"
    assert split.source.size == images_path.stat().st_size
    assert split.labels is not None
    assert split.labels.tolist() == ["4", "3", "2", "1", "0"]
    np.testing.assert_array_equal(read_all(split, rows=2), images)


def test_explicit_split_with_npz_images_and_npy_labels(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    archive, labels_path = tmp_path / "data.npz", tmp_path / "y.npy"
    np.savez(archive, images=images_of(rng, 3))
    np.save(labels_path, np.array([1, 2, 3]))
    (split,) = plan_arrays([archive], [parse_split_spec(f"train=images:{labels_path}")])
    assert split.labels is not None
    assert split.labels.tolist() == ["1", "2", "3"]


def test_explicit_split_with_missing_key_lists_the_arrays(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=images_of(rng, 3))
    refused(
        lambda: plan_arrays([path], [parse_split_spec("train=x_train")]),
        "--split train",
        "'x_train'",
        f"{path}: images 3x4x5 uint8",
    )


def test_explicit_split_with_missing_npy_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    refused(lambda: plan_arrays([], [parse_split_spec(f"train={missing}")]), str(missing))


def test_explicit_split_with_missing_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=images_of(rng, 3))
    refused(
        lambda: plan_arrays([path], [parse_split_spec("train=images:y_train")]),
        "y_train",
        "labels not found",
        str(path),
    )


def test_explicit_split_with_missing_npy_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    images_path, missing = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(images_path, images_of(rng, 3))
    refused(
        lambda: plan_arrays([], [parse_split_spec(f"train={images_path}:{missing}")]),
        str(missing),
        "labels not found",
    )


def test_explicit_split_refuses_an_npz_path_as_array(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 3))
    refused(lambda: plan_arrays([], [parse_split_spec(f"train={path}")]), str(path), "npz")


def test_explicit_split_refuses_a_key_found_in_two_archives(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(first, images=images_of(rng, 2))
    np.savez(second, images=images_of(rng, 2))
    refused(
        lambda: plan_arrays([first, second], [parse_split_spec("train=images")]),
        str(first),
        str(second),
    )


def test_two_explicit_splits_with_one_name_are_refused(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, a=images_of(rng, 2), b=images_of(rng, 2))
    specs = [parse_split_spec("train=a"), parse_split_spec("train=b")]
    refused(lambda: plan_arrays([path], specs), "split 'train'", f"{path}:a", f"{path}:b")


# ---------------------------------------------------------------------------------------------
# streaming .npz members and memory-mapping .npy files


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("rows", [1, 7, 23, 100])
@pytest.mark.parametrize("row_shape", [(5, 6), (5, 6, 3), (5, 6, 1)])
def test_npz_member_streams_exactly_the_array(
    tmp_path: Path,
    rng: np.random.Generator,
    compressed: bool,
    rows: int,
    row_shape: tuple[int, ...],
) -> None:
    path = tmp_path / "data.npz"
    images = images_of(rng, 23, *row_shape)
    (np.savez_compressed if compressed else np.savez)(path, x_train=images)
    member = NpzMember(path, "x_train")
    assert member.shape == images.shape
    assert member.dtype == images.dtype

    chunks = list(member.chunks(rows))

    assert len(chunks) == -(-23 // rows)
    assert all(chunk.shape[0] <= rows for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), images)


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">i8", "<f8", "|b1"])
def test_npz_member_keeps_byte_order_and_values(
    tmp_path: Path, rng: np.random.Generator, dtype: str
) -> None:
    path = tmp_path / "data.npz"
    images = (rng.random((9, 3, 4)) * 1000).astype(dtype)
    np.savez_compressed(path, x_train=images)
    (split,) = plan_arrays([path])
    assert split.images.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read_all(split, rows=4), images)


def test_npz_member_chunks_can_be_read_twice(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    images = images_of(rng, 10)
    np.savez_compressed(path, x_train=images)
    (split,) = plan_arrays([path])
    np.testing.assert_array_equal(read_all(split, rows=3), read_all(split, rows=4))


def test_fortran_ordered_npz_member_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.asfortranarray(images_of(rng, 5)))
    refused(lambda: plan_arrays([path]), str(path), "'x_train'", "Fortran order")


def test_truncated_npz_member_is_refused_while_streaming(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    pixels = images_of(rng, 5, 4, 4)
    with zipfile.ZipFile(path, "w") as archive:
        # The header promises 10 images; the member holds 5.
        archive.writestr("x_train.npy", npy_header((10, 4, 4)) + pixels.tobytes())
    (split,) = plan_arrays([path])
    refused(lambda: read_all(split, rows=3), str(path), "'x_train'", "truncated")


def test_npy_images_are_memory_mapped(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "x.npy"
    images = images_of(rng, 12, 6, 6)
    np.save(path, images)
    (split,) = plan_arrays([path], [parse_split_spec(f"train={path}")])
    assert isinstance(split.images, MemoryArray)
    assert isinstance(split.images._array, np.memmap)
    chunks = list(split.images.chunks(5))
    assert [c.shape[0] for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), images)


def test_fortran_ordered_npy_images_are_read_correctly(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "x.npy"
    images = images_of(rng, 6, 3, 4)
    np.save(path, np.asfortranarray(images))
    (split,) = plan_arrays([], [parse_split_spec(f"train={path}")])
    np.testing.assert_array_equal(read_all(split, rows=4), images)


# ---------------------------------------------------------------------------------------------
# pickles


def write_pickle(path: Path, value: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    return path


def test_pickle_is_refused_without_allow_pickle(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_pickle(tmp_path / "data.bin", {"x_train": images_of(rng, 2)})
    refused(lambda: plan_arrays([path]), str(path), "pickle", "--allow-pickle")


def test_old_protocol_pickle_is_refused_by_its_suffix(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = write_pickle(tmp_path / "data.pkl", {"x_train": images_of(rng, 2)}, protocol=0)
    refused(lambda: plan_arrays([path]), str(path), "--allow-pickle")


def test_pickled_dict_of_arrays_is_accepted_with_allow_pickle(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = {
        "train_dataset": images_of(rng, 4),
        "train_labels": np.arange(4),
        "test_dataset": images_of(rng, 2),
        "test_labels": np.array([7, 8]),
        "notes": "ignored, not an array",
    }
    path = write_pickle(tmp_path / "notMNIST.pickle", data)
    splits = by_name(plan_arrays([path], allow_pickle=True))
    assert set(splits) == {"train", "test"}
    assert splits["train"].source.format == "pickle"
    assert splits["test"].labels is not None
    assert splits["test"].labels.tolist() == ["7", "8"]
    np.testing.assert_array_equal(read_all(splits["train"]), data["train_dataset"])


def test_pickled_list_is_refused_even_with_allow_pickle(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = write_pickle(tmp_path / "data.pkl", [images_of(rng, 2)])
    refused(lambda: plan_arrays([path], allow_pickle=True), str(path), "list", "dict of arrays")


def test_broken_pickle_is_refused_with_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "data.pkl"
    path.write_bytes(b"\x80\x04garbage that is not a pickle")
    refused(lambda: plan_arrays([path], allow_pickle=True), str(path), "cannot be unpickled")


def test_npz_with_object_array_is_refused_without_allow_pickle(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    labels = np.array(["a", 1], dtype=object)
    np.savez(path, x_train=images_of(rng, 2), y_train=labels)
    refused(lambda: plan_arrays([path]), str(path), "'y_train'", "--allow-pickle")


def test_npz_object_labels_are_accepted_with_allow_pickle(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images_of(rng, 2), y_train=np.array(["a", 1], dtype=object))
    (split,) = plan_arrays([path], allow_pickle=True)
    assert split.labels is not None
    assert split.labels.tolist() == ["a", "1"]


def test_npz_object_images_are_refused_even_with_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.zeros((2, 3, 3), dtype=object))
    refused(lambda: plan_arrays([path], allow_pickle=True), str(path), "'x_train'", "object")


def test_npy_with_object_array_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3, 3), dtype=object), allow_pickle=True)
    refused(
        lambda: plan_arrays([], [parse_split_spec(f"train={path}")]), str(path), "--allow-pickle"
    )


def test_npy_labels_with_objects_are_refused_without_allow_pickle(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    images_path, labels_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(images_path, images_of(rng, 2))
    np.save(labels_path, np.array(["a", 2], dtype=object), allow_pickle=True)
    spec = parse_split_spec(f"train={images_path}:{labels_path}")
    refused(lambda: plan_arrays([], [spec]), str(labels_path), "--allow-pickle")


# ---------------------------------------------------------------------------------------------
# garbage


def garbage_cases(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    random_bytes = tmp_path / "random.npz"
    random_bytes.write_bytes(b"\x00" + rng.bytes(4096))
    empty = tmp_path / "empty.npy"
    empty.touch()
    truncated = tmp_path / "truncated.npz"
    np.savez_compressed(tmp_path / "whole.npz", x_train=images_of(rng, 50))
    whole = (tmp_path / "whole.npz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    text_zip = tmp_path / "text.npz"
    with zipfile.ZipFile(text_zip, "w") as archive:
        archive.writestr("x_train.npy", "not an array")
    directory = tmp_path / "dir.npz"
    directory.mkdir()
    return {
        "random": random_bytes,
        "empty": empty,
        "truncated": truncated,
        "text-member": text_zip,
        "directory": directory,
        "missing": tmp_path / "missing.npz",
    }


@pytest.mark.parametrize(
    "case", ["random", "empty", "truncated", "text-member", "directory", "missing"]
)
def test_garbage_source_is_refused_naming_the_path(
    tmp_path: Path, rng: np.random.Generator, case: str
) -> None:
    path = garbage_cases(tmp_path, rng)[case]
    refused(lambda: plan_arrays([path]), str(path))


@pytest.mark.parametrize("case", ["random", "empty", "truncated", "directory", "missing"])
def test_garbage_named_by_split_is_refused_naming_the_path(
    tmp_path: Path, rng: np.random.Generator, case: str
) -> None:
    path = garbage_cases(tmp_path, rng)[case]
    refused(lambda: plan_arrays([], [parse_split_spec(f"train={path}")]), str(path))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from(
        [b"", NPY_MAGIC, NPY_MAGIC + b"\x01\x00", NPY_MAGIC + b"\x02\x00", b"PK\x03\x04", b"\x80"]
    ),
    body=st.binary(max_size=300),
    suffix=st.sampled_from([".npz", ".npy", ".pkl", ".bin"]),
)
def test_random_bytes_only_ever_raise_input_error(
    tmp_path: Path, prefix: bytes, body: bytes, suffix: str
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(prefix + body)
    for call in (
        lambda: plan_arrays([path]),
        lambda: plan_arrays([], [SplitSpec("train", str(path), None)]),
    ):
        try:
            splits = call()
        except InputError as exc:
            assert str(path) in str(exc)
        else:  # only possible if the bytes happen to form a valid image array
            for split in splits:
                read_all(split)


# Hand-made corruptions that random bytes are unlikely to reach.


def test_npz_member_with_negative_dimension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy_header((5, -4, 4)) + bytes(80))
    refused(lambda: plan_arrays([path]), str(path))


def test_npz_member_with_negative_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy_header((-5, 4, 4)) + bytes(80))
    refused(lambda: plan_arrays([path]), str(path))


def test_npy_with_impossible_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(npy_header((10**20, 4, 4)) + bytes(80))
    refused(lambda: plan_arrays([], [parse_split_spec(f"train={path}")]), str(path))


def test_corrupt_compressed_labels_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "data.npz"
    n = 2000
    np.savez_compressed(path, x_train=images_of(rng, n, 2, 2), y_train=rng.integers(0, 10, n))
    corrupt_member(path, "y_train.npy")
    refused(lambda: plan_arrays([path]), str(path))


def test_corrupt_compressed_images_are_refused_while_streaming(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x_train=images_of(rng, 200, 28, 28))
    corrupt_member(path, "x_train.npy")
    (split,) = plan_arrays([path])
    refused(lambda: read_all(split, rows=50), str(path), "'x_train'")


# ---------------------------------------------------------------------------------------------
# from_memory


def test_from_memory_takes_arrays_with_or_without_labels(rng: np.random.Generator) -> None:
    train, test = images_of(rng, 3), images_of(rng, 2, 4, 5, 3)
    splits = by_name(from_memory({"train": (train, [1, 2, 3]), "test": test}, name="mine"))
    assert splits["train"].labels is not None
    assert splits["train"].labels.tolist() == ["1", "2", "3"]
    assert splits["test"].labels is None
    assert splits["test"].source.format == "memory"
    assert splits["test"].source.path == "mine"
    np.testing.assert_array_equal(read_all(splits["test"]), test)


def test_from_memory_refuses_bad_images_and_labels(rng: np.random.Generator) -> None:
    refused(
        lambda: from_memory({"train": np.zeros((3, 4))}),
        "<memory>: array 'train'",
        "(N, H, W)",
    )
    refused(
        lambda: from_memory({"train": (images_of(rng, 3), [1, 2])}),
        "<memory>: labels of 'train'",
        "3 values",
    )


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["<f4", ">u2", "u1"])
def test_npy_chunks_read_every_row_in_order(tmp_path: Path, order: str, dtype: str) -> None:
    # A memory-mapped .npy is read chunk by chunk with plain reads (C order) or sliced
    # (Fortran order); either way the rows come back exactly, last partial chunk included.
    from catalog.loaders.arrays import MemoryArray

    data = np.arange(23 * 5 * 3, dtype=np.int64).reshape(23, 5, 3).astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, np.asarray(data, order=order))
    loaded = MemoryArray(np.load(path, mmap_mode="r"))
    chunks = list(loaded.chunks(4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 3]
    assert np.array_equal(np.concatenate(chunks), data)
    assert all(c.dtype == np.dtype(dtype) for c in chunks)
