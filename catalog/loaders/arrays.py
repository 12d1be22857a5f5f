"""numpy sources: ``.npz`` archives, ``.npy`` files and (only when allowed) pickled dicts.

``.npy`` files are memory-mapped and ``.npz`` members are streamed out of the zip one chunk at a
time (compressed or not), so memory is bounded by the chunk. Pickles can run arbitrary code when
loaded, so they are refused unless the caller passes ``allow_pickle=True``.

Which array is which split: an ``.npz`` (or pickled dict) array with three or more dimensions is a
split candidate, named by stripping common affixes (``x_train``, ``train_images``,
``train_dataset`` -> ``train``) and paired with its label twin (``y_train``, ``train_labels``).
``--split NAME=ARRAY[:LABELS]`` states it explicitly; ARRAY is a key inside a source, or a
``.npy`` path.
"""

from __future__ import annotations

import hashlib
import lzma
import pickle
import re
import threading
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from catalog.errors import BIDI_CONTROLS, InputError
from catalog.pixels import check_images

NPY_MAGIC = b"\x93NUMPY"
PICKLE_HINT = (
    "unpickling can run arbitrary code, so dsaudit refuses it; pass --allow-pickle only for "
    "a file you trust, or convert it with numpy.savez"
)

_CORRUPT_ZIP = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
"""What opening or reading a damaged zip member raises: bad CRC, bad deflate stream, short file,
and (found by fuzzing) NotImplementedError for a garbled compression method and RuntimeError for
a garbled flag that marks the member encrypted."""

_IMAGE_PREFIXES = ("x_", "X_", "images_")
_IMAGE_SUFFIXES = ("_images", "_imgs", "_dataset", "_data", "_x", "_X", "_features")
_NOT_LABELS = re.compile(
    r"(^|[_\W\d])(ids?|uids?|idx|index|indices|keys?|file(name)?s?|paths?|urls?|masks?|"
    r"weights?|sizes?|width|height|shape|time(stamp)?s?|dates?)($|[_\W\d])",
    re.IGNORECASE,
)
"""Array names that say they are not labels (`_refuse_unused_labels`): ``test_ids``,
``filenames``, ``sample_weight``; every other array of one value per image may be labels."""
_LABEL_LIKE = re.compile(r"label|lbl|target|class|categor|(^|[_\W])y($|[_\W])", re.IGNORECASE)
"""Array names that say labels, whatever else they say (``train_class_ids``, ``label_idx``)."""

_LABEL_PATTERNS = (
    "{}_labels",
    "y_{}",
    "Y_{}",
    "{}_y",
    "{}_Y",
    "{}_label",
    "{}_targets",
    "labels_{}",
)
_SPLIT_WORDS = {"train", "training", "valid", "validation", "val", "dev", "test", "testing"}


class ImageArray(Protocol):
    """An (N, H, W[, C]) image array read lazily, chunk by chunk."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Consecutive slices of at most ``rows`` images, in order."""
        ...


@dataclass(frozen=True)
class SourceFile:
    """A file an ingest read, recorded for provenance. Its sha256 is the ingest's to compute
    (`catalog.ingest`): an array file's while its rows are read, an image folder's from its
    files' manifest."""

    path: str
    format: str
    size: int

    @property
    def digested(self) -> bool:
        """Whether the file's own bytes are digested (an array file, not a folder or memory)."""
        return self.format in FILE_FORMATS


@dataclass(frozen=True)
class SplitInput:
    """One split to ingest: its images, labels (strings) and where they came from."""

    name: str
    images: ImageArray
    labels: np.ndarray | None
    source: SourceFile
    key: str
    labels_source: SourceFile | None = None
    """The file the labels were read from when it is not ``source`` (a labels .npy)."""

    @property
    def count(self) -> int:
        """How many images the split has."""
        return self.images.shape[0]

    @property
    def where(self) -> str:
        """How messages name this split's array: the file, and the key inside it if any."""
        return array_where(self.source, self.key)


def array_where(source: SourceFile, key: str) -> str:
    """``file: array 'key'``, or just the file for a .npy (it holds one array)."""
    return f"{source.path}: array '{key}'" if source.format != "npy" else source.path


@dataclass(frozen=True)
class SplitSpec:
    """``NAME=ARRAY[:LABELS]`` from the command line."""

    name: str
    images: str
    labels: str | None


class MemoryArray:
    """An in-memory or memory-mapped array; slicing a memmap reads only that slice."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        array = self._array
        if isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous:
            yield from self._read_chunks(array, rows)
            return
        for start in range(0, array.shape[0], rows):
            yield np.asarray(array[start : start + rows])

    @staticmethod
    def _read_chunks(array: np.memmap, rows: int) -> Iterator[np.ndarray]:
        """A memory-mapped ``.npy`` read chunk by chunk with plain reads: every page a mapping
        touches stays in the process's resident memory until the mapping closes (a 1M-image
        file is 3 GB), while a read chunk is freed once processed."""
        row_shape = array.shape[1:]
        per_row = int(np.prod(row_shape, dtype=np.int64))
        row_bytes = per_row * array.dtype.itemsize
        try:
            stream = open(str(array.filename), "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:  # gone or unreadable since it was planned
            raise InputError(f"{array.filename}: cannot be read ({exc.strerror})") from None
        with stream:
            for start in range(0, array.shape[0], rows):
                count = min(rows, array.shape[0] - start)
                stream.seek(array.offset + start * row_bytes)
                data = np.fromfile(stream, dtype=array.dtype, count=count * per_row)
                if data.size != count * per_row:
                    raise InputError(f"{array.filename}: truncated at row {start}")
                yield data.reshape((count, *row_shape))


class NpzMember:
    """One array inside an ``.npz``, streamed out of the zip without loading it whole."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        with ExitStack() as stack:
            stream = self._open(stack)
            self._shape, fortran, self._dtype = _read_npy_header(stream, f"{path}:{key}")
        if fortran and len(self._shape) > 1:
            raise InputError(
                f"{path}: array '{key}' is stored in Fortran order, which cannot be streamed; "
                "save it with numpy.ascontiguousarray first"
            )

    def _open(self, stack: ExitStack) -> IO[bytes]:
        """The member's stream (closed with ``stack``); a damaged zip is the file's fault."""
        try:
            archive = stack.enter_context(zipfile.ZipFile(self.path))
            return stack.enter_context(archive.open(f"{self.key}.npy"))
        except _CORRUPT_ZIP as exc:
            raise InputError(
                f"{self.path}: array '{self.key}' cannot be opened ({_first_line(exc)})"
            ) from None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        row_shape = self._shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self._dtype.itemsize
        with ExitStack() as stack:
            stream = self._open(stack)
            _read_npy_header(stream, f"{self.path}:{self.key}")
            for start in range(0, self._shape[0], rows):
                count = min(rows, self._shape[0] - start)
                try:
                    data = stream.read(count * row_bytes)
                except _CORRUPT_ZIP as exc:
                    raise InputError(
                        f"{self.path}: array '{self.key}' is corrupt ({type(exc).__name__}: {exc})"
                    ) from None
                if len(data) != count * row_bytes:
                    raise InputError(f"{self.path}: array '{self.key}' is truncated")
                yield np.frombuffer(data, dtype=self._dtype).reshape((count, *row_shape))


def _read_npy_header(stream: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001
        # numpy parses the header (a Python literal) of an untrusted file: a damaged one fails
        # with ValueError, SyntaxError, tokenize.TokenError, UnicodeDecodeError, a zip error...
        # Every one of them means the same thing to the person: this file is not readable.
        raise InputError(f"{where}: not a readable .npy array ({_first_line(exc)})") from None
    _check_shape(tuple(shape), dtype, where)
    return tuple(shape), bool(fortran), dtype


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_MAX_ARRAY_BYTES = 1 << 50
"""No real file holds a petabyte array: a header claiming more is corrupt."""


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if any(int(d) < 0 for d in shape):
        raise InputError(f"{where}: the .npy header declares an impossible shape {shape}")
    size = 1
    for dim in shape:
        size *= int(dim)
    if size * max(dtype.itemsize, 1) > _MAX_ARRAY_BYTES:
        raise InputError(f"{where}: the .npy header declares an impossibly large shape {shape}")


def parse_split_spec(text: str) -> SplitSpec:
    """Parse ``NAME=ARRAY[:LABELS]``."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise InputError(
            f"--split {text!r}: expected NAME=ARRAY[:LABELS], e.g. train=x_train:y_train"
        )
    images, colon, labels = rest.partition(":")
    if not images:
        raise InputError(f"--split {text!r}: the image array is missing after '='")
    if colon and not labels:
        raise InputError(
            f"--split {text!r}: the labels are missing after ':' (leave the ':' out for a "
            "split without labels)"
        )
    return SplitSpec(name=name, images=images, labels=labels or None)


FILE_FORMATS = ("npy", "npz", "pickle")
"""`SourceFile.format` of the array files `plan_arrays` reads."""
_DIGEST_BLOCK = 1 << 20


def file_digest(path: Path, stop: threading.Event | None = None) -> str:
    """sha256 of a file's bytes, read in blocks; "" if ``stop`` is set before the end.

    hashlib and the reads release the GIL, so a thread digests a file while others work.
    """
    sha256 = hashlib.sha256()
    block = bytearray(_DIGEST_BLOCK)
    view = memoryview(block)
    with path.open("rb") as handle:
        while size := handle.readinto(block):
            if stop is not None and stop.is_set():
                return ""
            sha256.update(view[:size])
    return sha256.hexdigest()


def _source_file(path: Path, fmt: str) -> SourceFile:
    return SourceFile(path=str(path), format=fmt, size=path.stat().st_size)


def _sniff(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; array sources are .npz, .npy or pickle files")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(b"PK"):  # local file header, or the end record of an empty archive
        return "npz"
    if head[:1] == b"\x80" or path.suffix.lower() in (".pickle", ".pkl"):
        return "pickle"
    raise InputError(f"{path}: not a .npy, .npz or pickle file (unrecognised content)")


class _Container:
    """The named arrays of one .npz or pickled dict, opened lazily."""

    def __init__(self, path: Path, fmt: str, allow_pickle: bool) -> None:
        self.path = path
        self.format = fmt
        self.arrays: dict[str, ImageArray | np.ndarray] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        if fmt == "npz":
            self._open_npz(allow_pickle)
        else:
            self._open_pickle(allow_pickle)

    def _open_npz(self, allow_pickle: bool) -> None:
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                for key in names:
                    with archive.open(f"{key}.npy") as stream:
                        shape, _fortran, dtype = _read_npy_header(stream, f"{self.path}:{key}")
                    self.shapes[key] = (shape, dtype)
        except _CORRUPT_ZIP as exc:
            raise InputError(
                f"{self.path}: not a readable .npz archive ({_first_line(exc)})"
            ) from None
        for key, (_shape, dtype) in self.shapes.items():
            if dtype.hasobject and not allow_pickle:
                raise InputError(
                    f"{self.path}: array '{key}' holds Python objects (a pickle); {PICKLE_HINT}"
                )

    def _open_pickle(self, allow_pickle: bool) -> None:
        if not allow_pickle:
            raise InputError(f"{self.path}: is a pickle file; {PICKLE_HINT}")
        try:
            with self.path.open("rb") as handle:
                data = pickle.load(handle)  # noqa: S301 - the user asked for it explicitly
        except Exception as exc:  # any unpickling failure is the file's fault
            raise InputError(
                f"{self.path}: cannot be unpickled ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(data, Mapping):
            raise InputError(
                f"{self.path}: the pickle holds a {type(data).__name__}, expected a dict of arrays"
            )
        for key, value in data.items():
            if isinstance(key, str) and isinstance(value, np.ndarray):
                self.arrays[key] = value
                self.shapes[key] = (tuple(value.shape), value.dtype)

    def image_array(self, key: str) -> ImageArray:
        if self.format == "npz":
            shape, dtype = self.shapes[key]
            if dtype.hasobject:
                with np.load(self.path, allow_pickle=True) as archive:
                    return MemoryArray(archive[key])
            return NpzMember(self.path, key)
        value = self.arrays[key]
        assert isinstance(value, np.ndarray)
        return MemoryArray(value)

    def labels(self, key: str) -> np.ndarray:
        if self.format == "npz":
            try:
                with np.load(self.path, allow_pickle=self.shapes[key][1].hasobject) as archive:
                    return archive[key]
            except (*_CORRUPT_ZIP, ValueError) as exc:
                raise InputError(
                    f"{self.path}: array '{key}' is corrupt ({type(exc).__name__}: {exc})"
                ) from None
        value = self.arrays[key]
        assert isinstance(value, np.ndarray)
        return value

    def listing(self) -> str:
        return ", ".join(
            f"{key} {'x'.join(map(str, shape)) or 'scalar'} {dtype}"
            for key, (shape, dtype) in self.shapes.items()
        )


def _split_name(key: str) -> str | None:
    """The split an array key names (``x_train`` -> ``train``), or None if unrecognisable."""
    for prefix in _IMAGE_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix) :]
    for suffix in _IMAGE_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    if key.lower() in _SPLIT_WORDS:
        return key
    return None


LABEL_LIMIT = 200
"""Longest label the catalog keeps (``item.label``), in characters."""


def _label_key(container: _Container, split: str, images_key: str, n: int) -> str | None:
    """The label twin of a split's image array (``y_train`` for ``x_train``), if any.

    Raises:
        InputError: the twin exists but cannot be one label per image.
    """
    for pattern in _LABEL_PATTERNS:
        key = pattern.format(split)
        if key == images_key or key not in container.shapes:
            continue
        shape, _dtype = container.shapes[key]
        if shape in ((n,), (n, 1)):
            return key
        raise InputError(
            f"{container.path}: array '{key}' shaped {shape} cannot label the {n} images of "
            f"'{images_key}' (one label per image is needed); choose with --split"
        )
    return None


def _clean_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """Labels as a 1-D array of strings; ints, bools and strings are accepted."""
    return _storable(_as_strings(labels, n, where), where)


def _storable(labels: np.ndarray, where: str) -> np.ndarray:
    """``labels`` (strings), refused where the catalog could not store one as it is: longer
    than `LABEL_LIMIT`, or holding a lone surrogate (text decoded from bytes that were not
    UTF-8), which no UTF-8 column takes. Vectorised over the code points."""
    if labels.size == 0:
        return labels
    width = labels.dtype.itemsize // 4
    little = np.ascontiguousarray(labels, dtype=labels.dtype.newbyteorder("<"))
    codes = little.view(np.uint32).reshape(labels.size, width)
    if width > LABEL_LIMIT:
        # A str array pads with NULs, and a label's own trailing NULs are dropped by numpy.
        length = width - np.argmax(codes[:, ::-1] != 0, axis=1)
        length[~codes.any(axis=1)] = 0
        long = np.flatnonzero(length > LABEL_LIMIT)
        if long.size:
            raise InputError(
                f"{where}: label {long[0]} is {int(length[long[0]]):,} characters long; the "
                f"catalog keeps labels of up to {LABEL_LIMIT}"
            )
    bad = np.flatnonzero(((codes >= 0xD800) & (codes <= 0xDFFF)).any(axis=1))
    if bad.size:
        raise InputError(
            f"{where}: label {bad[0]} is not valid Unicode text (a lone surrogate, as from "
            "bytes that were not UTF-8)"
        )
    # A NUL inside a label (numpy drops trailing ones): PostgreSQL's text refuses it.
    inner = (codes[:, :-1] == 0) & (codes[:, 1:] != 0)
    nul = np.flatnonzero(inner.any(axis=1)) if width > 1 else np.empty(0, np.int64)
    if nul.size:
        raise InputError(f"{where}: label {nul[0]} holds a NUL character, which no label may")
    # Controls, line separators and bidi overrides, as names refuse them (`unprintable`):
    # category Cc is U+0001-001F and U+007F-009F (NUL is padding here, refused above).
    control = ((codes >= 1) & (codes < 0x20)) | ((codes >= 0x7F) & (codes < 0xA0))
    control |= np.isin(codes, _REFUSED_POINTS)
    odd = np.flatnonzero(control.any(axis=1))
    if odd.size:
        row = odd[0]
        char = chr(int(codes[row][control[row]][0]))
        raise InputError(
            f"{where}: label {row} holds the control character {ascii(char)}, which no label "
            "may (it would print as something else)"
        )
    return labels


_REFUSED_POINTS = np.array(
    sorted({0x2028, 0x2029} | {ord(c) for c in BIDI_CONTROLS}), dtype=np.uint32
)
"""Code points `unprintable` refuses outside the control ranges: line and paragraph
separators (Zl, Zp) and bidirectional controls."""


def _as_strings(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(
            f"{where}: labels must be a 1-D array of {n} values (one per image), "
            f"not shaped {labels.shape}"
        )
    kind = labels.dtype.kind
    if kind == "f":
        exact = np.isfinite(labels) & (labels == np.round(labels)) & (np.abs(labels) <= 2.0**53)
        if not np.all(exact):
            raise InputError(f"{where}: float labels must be whole numbers (within ±2^53)")
        return labels.astype(np.int64).astype(str)
    if kind in "iub":
        return labels.astype(str)
    if kind == "U":
        return labels
    if kind == "S":
        # Bytes that are not UTF-8 become lone surrogates, which `_storable` refuses: replaced by
        # U+FFFD, two different labels could read as one and hide a conflict.
        return np.char.decode(labels, "utf-8", errors="surrogateescape")
    if kind == "O" and all(isinstance(v, str | int | np.integer) for v in labels):
        return labels.astype(str)
    raise InputError(f"{where}: labels must be integers or strings, not {labels.dtype}")


def _check(images: ImageArray, where: str) -> None:
    # Dimensions and dtype from the header: nothing is read.
    try:
        check_images(images, where)
    except (ValueError, OverflowError, MemoryError) as exc:
        raise InputError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    if images.shape[0] == 0:
        raise InputError(f"{where}: the array holds no images (shape {images.shape})")


def _make_split(
    name: str,
    images: ImageArray,
    labels: np.ndarray | None,
    source: SourceFile,
    key: str,
    labels_where: str,
    labels_source: SourceFile | None = None,
) -> SplitInput:
    where = array_where(source, key)
    if len(images.shape) not in (3, 4):
        raise InputError(
            f"{where}: images must be shaped (N, H, W) or (N, H, W, C), not {images.shape}"
        )
    _check(images, where)
    clean = _clean_labels(labels, images.shape[0], labels_where) if labels is not None else None
    return SplitInput(
        name=name,
        images=images,
        labels=clean,
        source=source,
        key=key,
        labels_source=labels_source if clean is not None else None,
    )


def plan_arrays(
    sources: Sequence[Path],
    splits: Sequence[SplitSpec] = (),
    *,
    allow_pickle: bool = False,
) -> list[SplitInput]:
    """Decide which arrays of which files become which splits, reading only headers.

    Args:
        sources: .npz, .npy or pickle files (.npy files may also be named only in ``splits``).
        splits: explicit ``NAME=ARRAY[:LABELS]`` choices; when empty, splits are recognised
            from the array names of the .npz/pickle sources.
        allow_pickle: accept pickle files and object arrays (they can run code when loaded).

    Raises:
        InputError: a file cannot be read, or which array is which split cannot be told.
    """
    containers: list[_Container] = []
    npy_files: dict[Path, SourceFile] = {}
    source_files: dict[Path, SourceFile] = {}
    for raw in sources:
        path = Path(raw)
        fmt = _sniff(path)
        if fmt == "npy":
            npy_files[path.resolve()] = _source_file(path, "npy")
            continue
        container = _Container(path, fmt, allow_pickle)
        containers.append(container)
        source_files[path] = _source_file(path, fmt)
    if splits:
        result = [
            _explicit(spec, containers, source_files, npy_files, allow_pickle) for spec in splits
        ]
        used = {Path(split.source.path).resolve() for split in result} | {
            Path(split.labels_source.path).resolve()
            for split in result
            if split.labels_source is not None
        }
        for path in [*source_files, *npy_files]:
            if Path(path).resolve() not in used:
                raise InputError(
                    f"{path}: named, but no --split takes an array from it; --split replaces "
                    "recognising splits by name, so name every split of every file (or leave "
                    "the file out)"
                )
    else:
        if npy_files and not containers:
            raise InputError(
                f"{next(iter(npy_files))}: a .npy file holds one array; say which split it is "
                "with --split NAME=FILE.npy[:LABELS.npy]"
            )
        if not containers:
            raise InputError("no source files given: name .npz/.npy files or use --split")
        result = [s for c in containers for s in _recognise(c, source_files[c.path])]
    seen: dict[str, SplitInput] = {}
    for split in result:
        if split.name in seen:
            raise InputError(
                f"split '{split.name}' comes from both {seen[split.name].source.path}:"
                f"{seen[split.name].key} and {split.source.path}:{split.key}; choose one with "
                "--split NAME=ARRAY[:LABELS]"
            )
        seen[split.name] = split
    return result


def _recognise(container: _Container, source: SourceFile) -> list[SplitInput]:
    candidates = [k for k, (shape, _dt) in container.shapes.items() if len(shape) >= 3]
    if not candidates:
        raise InputError(
            f"{container.path}: no image arrays (3 or more dimensions) found; arrays: "
            f"{container.listing() or 'none'}"
        )
    named = {key: _split_name(key) for key in candidates}
    unknown = [key for key, name in named.items() if name is None]
    if unknown:
        raise InputError(
            f"{container.path}: cannot tell which split array(s) {', '.join(unknown)} belong to; "
            f"arrays: {container.listing()}; say it with --split NAME=ARRAY[:LABELS]"
        )
    label_keys = {
        key: _label_key(container, name, key, container.shapes[key][0][0])
        for key, name in named.items()
        if name is not None
    }
    _refuse_unused_labels(container, named, label_keys)
    result = []
    for key, name in named.items():
        assert name is not None
        label_key = label_keys[key]
        labels = container.labels(label_key) if label_key else None
        result.append(
            _make_split(
                name,
                container.image_array(key),
                labels,
                source,
                key,
                f"{container.path}: array '{label_key}'",
            )
        )
    return result


def _refuse_unused_labels(
    container: _Container, named: dict[str, str | None], label_keys: dict[str, str | None]
) -> None:
    """Refuse a split left unlabelled beside an array that could be its labels.

    Labels are recognised by name (``y_train`` for ``x_train``, `_LABEL_PATTERNS`). An array of
    one value per image under another name (``train_target``, ``train_lbl``, ``gt``) would
    otherwise be left out without a word, and label conflicts in that split could never be
    found. Arrays whose names say they are something else (`_NOT_LABELS`: ``test_ids``,
    ``filenames``) are not labels.

    Raises:
        InputError: naming the split and the array, with the ``--split`` options for this
            file's splits (``--split`` replaces recognition: `plan_arrays` then refuses a file
            no ``--split`` uses).
    """
    used = set(named) | {key for key in label_keys.values() if key}
    for key, label_key in label_keys.items():
        if label_key is not None:
            continue
        n = container.shapes[key][0][0]
        unused = [
            other
            for other, (shape, _dtype) in container.shapes.items()
            if other not in used
            and shape in ((n,), (n, 1))
            and (_LABEL_LIKE.search(other) or not _NOT_LABELS.search(other))
        ]
        if unused:
            options = " ".join(
                f"--split {named[k]}={k}"
                + (f":{v}" if v else (f":{unused[0]}" if k == key else ""))
                for k, v in label_keys.items()
            )
            raise InputError(
                f"{container.path}: no labels array is named for '{key}' (split {named[key]}), "
                f"but {', '.join(repr(u) for u in unused)} could be; say which: {options} "
                f"(or without ':{unused[0]}' for no labels)"
            )


def _explicit(
    spec: SplitSpec,
    containers: list[_Container],
    source_files: dict[Path, SourceFile],
    npy_files: dict[Path, SourceFile],
    allow_pickle: bool,
) -> SplitInput:
    holders = [c for c in containers if spec.images in c.shapes]
    if len(holders) > 1:
        raise InputError(
            f"--split {spec.name}: array '{spec.images}' is in "
            f"{' and '.join(str(c.path) for c in holders)}; ingest them as separate versions"
        )
    if holders:
        container = holders[0]
        labels = None
        labels_where = f"{container.path}: array '{spec.labels}'"
        labels_source = None
        if spec.labels is not None:
            if spec.labels in container.shapes:
                labels = container.labels(spec.labels)
            else:
                labels, labels_where, labels_source = _npy_labels(
                    Path(spec.labels), npy_files, allow_pickle, container
                )
        return _make_split(
            spec.name,
            container.image_array(spec.images),
            labels,
            source_files[container.path],
            spec.images,
            labels_where,
            labels_source,
        )
    path = Path(spec.images)
    if not path.exists():
        known = "; ".join(f"{c.path}: {c.listing()}" for c in containers)
        # A .npy source is named by its file: x_train.npy, not the x_train of an archive.
        files = [str(p) for p in npy_files if p.stem == spec.images]
        raise InputError(
            f"--split {spec.name}: '{spec.images}' is neither an array in the sources nor a file"
            + (f" (arrays: {known})" if known else "")
            + (f"; a .npy source is named by its path: {files[0]}" if files else "")
        )
    fmt = _sniff(path)
    if fmt != "npy":
        raise InputError(f"{path}: --split takes a .npy file or an array key, not a {fmt} file")
    source = npy_files.setdefault(path.resolve(), _source_file(path, "npy"))
    images = MemoryArray(_load_npy(path, allow_pickle))
    labels = None
    labels_where = str(spec.labels)
    labels_source = None
    if spec.labels is not None:
        labels, labels_where, labels_source = _npy_labels(
            Path(spec.labels), npy_files, allow_pickle, None
        )
    return _make_split(spec.name, images, labels, source, path.name, labels_where, labels_source)


def _npy_labels(
    path: Path, npy_files: dict[Path, SourceFile], allow_pickle: bool, container: _Container | None
) -> tuple[np.ndarray, str, SourceFile]:
    """A labels .npy: its values, how messages name it, and its file (recorded as a source)."""
    if not path.exists():
        where = f" nor an array in {container.path} ({container.listing()})" if container else ""
        raise InputError(f"{path}: labels not found: no such file{where}")
    if _sniff(path) != "npy":
        raise InputError(f"{path}: labels must be a .npy file or an array key")
    source = npy_files.setdefault(path.resolve(), _source_file(path, "npy"))
    return np.asarray(_load_npy(path, allow_pickle)), str(path), source


def _load_npy(path: Path, allow_pickle: bool) -> np.ndarray:
    _check_npy_size(path)
    try:
        return np.load(path, mmap_mode=None if allow_pickle else "r", allow_pickle=allow_pickle)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "object" in str(exc).lower():
            raise InputError(f"{path}: holds Python objects (a pickle); {PICKLE_HINT}") from None
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    except (OSError, EOFError, OverflowError, MemoryError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


def _check_npy_size(path: Path) -> None:
    """Refuse a .npy whose header promises more data than the file holds, before mapping it.

    numpy would fail with "mmap length is greater than file size" (or try to allocate what a
    corrupt header claims); the person needs to hear that the file is truncated.
    """
    try:
        with path.open("rb") as stream:
            shape, _fortran, dtype = _read_npy_header(stream, str(path))
            offset = stream.tell()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if dtype.hasobject:
        return  # a pickled array has no fixed size; unpickling finds the damage
    count = 1
    for dim in shape:
        count *= int(dim)
    expected = count * dtype.itemsize
    actual = path.stat().st_size - offset
    if actual < expected:
        raise InputError(
            f"{path}: truncated or corrupt: its header declares shape {shape} {dtype} "
            f"({expected:,} bytes of data) but the file holds {max(actual, 0):,}"
        )


def from_memory(
    splits: Mapping[str, np.ndarray | tuple[np.ndarray, np.ndarray | None]],
    *,
    name: str = "<memory>",
) -> list[SplitInput]:
    """Splits from arrays already in memory: ``{"train": (images, labels), "test": images}``."""
    result = []
    source = SourceFile(path=name, format="memory", size=0)
    for split, value in splits.items():
        images, labels = value if isinstance(value, tuple) else (value, None)
        images = np.asarray(images)
        result.append(
            _make_split(
                split,
                MemoryArray(images),
                None if labels is None else np.asarray(labels),
                source,
                split,
                f"{name}: labels of '{split}'",
            )
        )
    return result
