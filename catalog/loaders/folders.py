"""Image folders: ``ROOT/<split>/<class>/*.png`` (torchvision's ImageFolder) or ``ROOT/<split>/*``.

Layout: every folder under ROOT is a split. A split's image files sit either in class folders
(the class folder is the label; deeper folders inside a class belong to it) or directly in the
split folder (unlabelled). ``--labels FILE.csv`` gives labels instead, as ``path,label`` rows
with paths relative to ROOT. Names starting with ``.`` are ignored, as are files whose suffix is
not an image's (`IMAGE_SUFFIXES`). Files are taken class folder by class folder (sorted by
name), each class's files by their sorted paths within it (``cat/a.png``, ``cat/sub/b.png``,
``cat/z.png``); that order is their position in the split.

The canonical rule (`canonical_pixels`), applied to every decoded picture before hashing, so one
picture gets one digest however it was saved:

- only the first frame of an animated or multi-page file is read; EXIF orientation is ignored
  (the pixels as stored, as Pillow and torchvision read them);
- 1-bit and 8-bit grayscale (modes ``1``, ``L``) -> uint8 (H, W); 1-bit black/white is 0/255;
- 16-bit grayscale (``I;16``, or ``I`` with every value in 0-65535) -> uint16 (H, W), kept
  16-bit (its 0-1 scale is the full 0-65535 range);
- palette images (``P``, ``PA``) are expanded to RGBA when they carry transparency, else RGB;
- alpha (``LA``, ``RGBA``, expanded palettes) is composited over black and dropped:
  ``c' = (c * a + 127) // 255`` in integers, so an opaque alpha channel changes nothing;
- RGB stays uint8 (H, W, 3); CMYK, YCbCr and other colour modes are converted to RGB by Pillow;
- 32-bit float pixels and 32-bit integers beyond 0-65535 are refused as undecodable.

So a grayscale PNG of a uint8 (H, W) array has that array's digest, an RGB PNG that of its
(H, W, 3) array, and the same picture saved as RGB, as opaque RGBA or as a palette PNG has one
digest.

Decoding runs in a process pool (one worker per core) on batches of files, a few batches in
flight at a time, and the decoded images are grouped by shape and dtype into chunks of at most
the ingest's chunk budget: memory is bounded by the chunk, never by the folder.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import multiprocessing
import os
import stat
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.errors import InputError, require_utf8, unprintable
from catalog.loaders.arrays import LABEL_LIMIT, SourceFile
from catalog.loaders.chunk import Chunk, SkippedFile
from catalog.pixels import MAX_SIDE, value_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_FORMAT = "folder"
"""`SourceFile.format` of an image folder."""
FIRST_BATCH = 8
"""Files per decoding task until the first results say how large the pictures are (a few
photos of 12 megapixels each is already a lot of memory)."""
MAX_BATCH = 512
IN_FLIGHT = 2
"""Decoding tasks in flight per worker process."""
MIN_FILES_FOR_POOL = 1000
"""Fewer files than this are decoded in this process: starting workers and shipping pictures
between processes would cost more than the ~0.2 s of decoding they could share."""
PARENT_CHECK_S = 0.5
"""How often a decoding worker checks that the ingest that started it is still running."""

_LAYOUT = "an image folder is ROOT/<split>/<class>/*.png (or ROOT/<split>/*.png, unlabelled)"

_PILLOW_MODULES = ("PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin")
Decoded = tuple[np.ndarray | None, str, int]
"""(canonical pixels or None, the file's sha256 hex or why it failed, the file's bytes)."""


# --- the canonical rule -------------------------------------------------------------------------


def _composite(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) over black, in exact integer arithmetic."""
    alpha = pixels[..., -1:].astype(np.uint16)
    out = (pixels[..., :-1].astype(np.uint16) * alpha + 127) // 255
    return out.astype(np.uint8)


def canonical_pixels(picture: object) -> np.ndarray:
    """A decoded picture's pixels under the canonical rule (see the module docstring).

    Args:
        picture: a loaded ``PIL.Image.Image``.

    Returns:
        uint8 (H, W) or (H, W, 3), or uint16 (H, W).

    Raises:
        ValueError: pixels the catalog does not take (32-bit float, wide 32-bit integers).
    """
    from PIL import Image

    assert isinstance(picture, Image.Image)
    mode = picture.mode
    if mode == "L":
        return np.asarray(picture)
    if mode == "1":
        return np.asarray(picture.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(picture).astype(np.uint16)
    if mode == "I":
        values = np.asarray(picture)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise ValueError("32-bit integer pixels beyond 0-65535 are not supported")
        return values.astype(np.uint16)
    if mode == "F":
        raise ValueError("32-bit float pixels (mode F) are not supported")
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in picture.info
        picture = picture.convert("RGBA" if transparent else "RGB")
        mode = picture.mode
    if mode in ("LA", "La"):
        return _composite(np.asarray(picture.convert("LA")))[..., 0]
    if mode in ("RGBA", "RGBa"):
        return _composite(np.asarray(picture.convert("RGBA")))
    if mode != "RGB":
        picture = picture.convert("RGB")
    return np.asarray(picture)


def decode(data: bytes) -> np.ndarray:
    """Decode an image file's bytes to canonical pixels (`canonical_pixels`).

    Raises:
        Exception: whatever Pillow raises for data it cannot decode (callers catch it).
    """
    with _quiet():
        return _decode(data)


@contextmanager
def _quiet() -> Iterator[None]:
    """Pillow warns about palette transparency and odd chunks; the rule handles those, and a
    warning must not become an error in a worker that inherited strict warning filters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _TooLarge(ValueError):
    """A picture over `catalog.pixels.MAX_SIDE` on a side, told from its header."""


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        # From the header, before the pixels are decoded (70000x2500 RGB would be 0.5 GB).
        width, height = picture.size
        if max(width, height) > MAX_SIDE:
            raise _TooLarge(f"is {height}x{width} pixels, over {MAX_SIDE} on a side")
        picture.load()
        return np.ascontiguousarray(canonical_pixels(picture))


def _why(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a format Pillow recognises, or a damaged header"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def read_regular_file(path: str) -> bytes:
    """A regular file's bytes. A pipe named like an image would block the read for ever and a
    device (a link to /dev/zero) never end it, so anything else is an `OSError`; opened
    without blocking, so that a pipe is looked at, not waited on."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file: a folder, pipe, device or socket")
        return handle.read()


def _decode_one(path: str) -> Decoded:
    try:
        data = read_regular_file(path)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})", 0
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return _decode(data), sha256, len(data)
    except _TooLarge as exc:  # as an array is refused (`catalog.pixels.check_images`)
        return None, str(exc), len(data)
    except Exception as exc:  # any failure to decode an untrusted file is the file's fault
        return None, f"cannot be decoded as an image ({_why(exc)})", len(data)


def decode_batch(root: str, relatives: Sequence[str]) -> list[Decoded]:
    """Read, digest (sha256) and decode files; runs in a worker process."""
    with _quiet():
        return [_decode_one(os.path.join(root, relative)) for relative in relatives]


def read_picture(path: str, sha256: str | None = None) -> np.ndarray | None:
    """One file's canonical pixels, or None when it is gone, changed (another sha256) or bad."""
    try:
        data = read_regular_file(path)
    except OSError:
        return None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        return decode(data)
    except Exception:  # a picture for people is a courtesy: a bad file shows none
        return None


# --- planning -----------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _utf8(directory: Path, name: str) -> str:
    """``name`` (of a file or folder in ``directory``), refused unless it is UTF-8 text.

    Python decodes other bytes to lone surrogates, which no database column or report takes:
    the ingest would fail at its first insert, after reading every file.
    """
    require_utf8(directory / name)
    return name


def _listing(directory: Path) -> tuple[list[str], list[str]]:
    """(image file names, folder names) directly inside ``directory``, sorted, hidden left out."""
    files, folders = [], []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{directory}: cannot be listed ({exc.strerror or exc})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            folders.append(_utf8(directory, entry.name))
        elif _is_image(entry.name):
            # Not only regular files: a pipe or a dangling link named like an image is named
            # by the decoder (`read_regular_file`), as in a class folder, not left out unsaid.
            files.append(_utf8(directory, entry.name))
    return files, folders


def _images_under(directory: Path) -> list[str]:
    """Image files anywhere under ``directory`` (relative to it, '/'-separated), sorted."""
    found: list[str] = []

    def unlisted(exc: OSError) -> None:
        # A class folder or a folder inside one that cannot be listed would lose its images
        # without a word (os.walk's default): the audit would miss them.
        raise InputError(
            f"{exc.filename or directory}: cannot be listed ({exc.strerror or exc})"
        ) from None

    for parent, folders, names in os.walk(directory, onerror=unlisted):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        base = Path(parent).relative_to(directory).as_posix()
        prefix = "" if base == "." else f"{base}/"
        found.extend(_utf8(directory, prefix + name) for name in names if _is_image(name))
    return sorted(found)


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image folder: its files in order, their labels, how to decode them."""

    name: str
    root: Path
    files: tuple[str, ...]
    """Paths relative to ``root``, '/'-separated, in position order."""
    labels: tuple[str | None, ...]
    source: SourceFile
    skip_bad: bool = False
    workers: int = 1

    @property
    def key(self) -> str:
        return self.name

    @property
    def count(self) -> int:
        return len(self.files)

    def chunks(self, budget: int) -> Iterator[Chunk]:
        """Decoded images grouped by shape and dtype, at most about ``budget`` bytes pending.

        Raises:
            InputError: a file cannot be read or decoded (unless ``skip_bad``).
        """
        groups: dict[tuple[tuple[int, ...], str], _Group] = {}
        pending = position = 0
        for start, results in self._decoded(budget):
            skipped = []
            for offset, (pixels, info, size) in enumerate(results):
                index = start + offset
                if pixels is None:
                    path = str(self.root / self.files[index])
                    if not self.skip_bad:
                        raise InputError(
                            f"{path}: {info}; pass --skip-bad to leave such files out "
                            "(they are listed on the version)"
                        )
                    skipped.append(SkippedFile(path, info))
                    continue
                group = groups.setdefault((pixels.shape, pixels.dtype.str), _Group())
                group.add(pixels, position, self.files[index], self.labels[index], info, size)
                pending += pixels.nbytes
                position += 1
                if pending >= budget:
                    yield from (group.chunk() for group in groups.values())
                    groups.clear()
                    pending = 0
            if skipped:
                yield Chunk(
                    images=np.empty((0, 1, 1), np.uint8),
                    positions=np.empty(0, np.int64),
                    labels=[],
                    scale=(0.0, 255.0),
                    skipped=tuple(skipped),
                )
        yield from (group.chunk() for group in groups.values())

    def _decoded(self, budget: int) -> Iterator[tuple[int, list[Decoded]]]:
        """(index of the batch's first file, its results), in file order."""
        root = str(self.root)
        sizes = _BatchSizer(budget, self.workers)
        if self.workers <= 1 or len(self.files) < MIN_FILES_FOR_POOL:
            for start, batch in sizes.batches(self.files):
                results = decode_batch(root, batch)
                sizes.observe(results)
                yield start, results
            return
        # forkserver, not fork: the ingest has threads (signing, SQLite), and forking a
        # threaded process can deadlock the child.
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has imported the decoder and Pillow's common plugins.
        context.set_forkserver_preload([__name__, *_PILLOW_MODULES])
        batches = sizes.batches(self.files)
        in_flight: deque[tuple[int, Future[list[Decoded]]]] = deque()
        with ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        ) as pool:
            try:
                for start, batch in batches:
                    in_flight.append((start, pool.submit(decode_batch, root, batch)))
                    if len(in_flight) >= IN_FLIGHT * self.workers:
                        break
                while in_flight:
                    start, job = in_flight.popleft()
                    results = job.result()
                    sizes.observe(results)
                    following = next(batches, None)
                    if following is not None:
                        in_flight.append(
                            (following[0], pool.submit(decode_batch, root, following[1]))
                        )
                    yield start, results
            finally:
                for _start, job in in_flight:
                    job.cancel()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            return status.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: the signal check is all there is


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the ingest's process is gone. Killed with SIGKILL, it
    cannot shut its pool down, and a worker waiting on the task queue would wait forever
    (each worker holds the queue's write end too, so it never sees end-of-file)."""

    def watch() -> None:
        while _alive(parent):
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="dsaudit-watch-parent", daemon=True).start()


class _BatchSizer:
    """Files per decoding task: every task in flight holds its pictures, so the batches are
    sized from the largest picture decoded so far to keep all of them within the chunk budget."""

    def __init__(self, budget: int, workers: int) -> None:
        self.budget = budget
        self.workers = max(1, workers)
        self.largest = 0

    def observe(self, results: list[Decoded]) -> None:
        for pixels, _info, _size in results:
            if pixels is not None:
                self.largest = max(self.largest, pixels.nbytes)

    def size(self) -> int:
        if not self.largest:
            return FIRST_BATCH
        return max(1, min(MAX_BATCH, self.budget // (self.largest * IN_FLIGHT * self.workers)))

    def batches(self, files: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
        start = 0
        while start < len(files):
            size = self.size()
            yield start, files[start : start + size]
            start += size


class _Group:
    """Decoded pictures of one shape and dtype waiting to become a chunk."""

    def __init__(self) -> None:
        self.pixels: list[np.ndarray] = []
        self.positions: list[int] = []
        self.keys: list[str] = []
        self.labels: list[str | None] = []
        self.sha256: list[str] = []
        self.file_bytes = 0

    def add(
        self, pixels: np.ndarray, position: int, key: str, label: str | None, sha: str, size: int
    ) -> None:
        self.pixels.append(pixels)
        self.positions.append(position)
        self.keys.append(key)
        self.labels.append(label)
        self.sha256.append(sha)
        self.file_bytes += size

    def chunk(self) -> Chunk:
        images = np.stack(self.pixels)
        return Chunk(
            images=images,
            positions=np.array(self.positions, dtype=np.int64),
            labels=self.labels,
            # Folder pixels have an intrinsic scale: 8-bit 0-255, 16-bit 0-65535.
            scale=value_range(images.dtype),
            keys=self.keys,
            sha256=self.sha256,
            file_bytes=self.file_bytes,
        )


def read_labels(path: Path) -> dict[str, tuple[str, int]]:
    """``path,label`` rows of a CSV (an optional ``path,label`` header first).

    Returns:
        relative path ('/'-separated) -> (label, line number)

    Raises:
        InputError: the file cannot be read, or a row is malformed or repeated.
    """
    found: dict[str, tuple[str, int]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                cells = [cell.strip() for cell in row]
                if number == 1 and [c.lower() for c in cells] == ["path", "label"]:
                    continue
                where = f"{path}: line {number}"
                if len(cells) != 2:
                    raise InputError(
                        f"{where}: expected 2 columns (path,label), found {len(cells)}"
                    )
                relative = cells[0].replace("\\", "/").removeprefix("./")
                label = cells[1]
                if not relative or not label:
                    raise InputError(f"{where}: both a path and a label are needed")
                if len(label) > LABEL_LIMIT:
                    raise InputError(f"{where}: label longer than {LABEL_LIMIT} characters")
                odd = unprintable(label)
                if odd is not None:
                    raise InputError(
                        f"{where}: the label holds the control character {ascii(odd)}, which "
                        "no label may"
                    )
                if relative in found:
                    raise InputError(
                        f"{where}: {relative} is labelled again (first on line "
                        f"{found[relative][1]})"
                    )
                found[relative] = (label, number)
    except FileNotFoundError:
        raise InputError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as a CSV of path,label ({exc})") from None
    if not found:
        raise InputError(f"{path}: no path,label rows")
    return found


def _split_files(root: Path, split: str) -> tuple[list[str], list[str | None]]:
    """(relative paths, class labels) of one split folder's images, in order."""
    directory = root / split
    files, folders = _listing(directory)
    classes = [(name, _images_under(directory / name)) for name in folders]
    classes = [(name, found) for name, found in classes if found]
    if files and classes:
        raise InputError(
            f"{directory}: mixes image files ({files[0]}...) with class folders "
            f"({classes[0][0]}/...); put every image in a class folder, or none"
        )
    if files:
        return [f"{split}/{name}" for name in files], [None] * len(files)
    if not classes:
        raise InputError(f"{directory}: no image files ({', '.join(IMAGE_SUFFIXES)}); {_LAYOUT}")
    relatives: list[str] = []
    labels: list[str | None] = []
    for name, found in classes:
        if len(name) > LABEL_LIMIT:
            raise InputError(
                f"{directory / name}: a class folder's name is its label, at most "
                f"{LABEL_LIMIT} characters; rename it or give --labels"
            )
        odd = unprintable(name)
        if odd is not None:
            raise InputError(
                f"{directory / ascii(name)[1:-1]}: a class folder's name is its label, and it "
                f"holds the control character {ascii(odd)}; rename it or give --labels"
            )
        relatives += [f"{split}/{name}/{f}" for f in found]
        labels += [name] * len(found)
    return relatives, labels


def plan_folder(
    root: Path,
    labels: Path | None = None,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
) -> list[FolderSplit]:
    """The splits of an image folder, found by listing it (no file is opened yet).

    Args:
        root: the folder; each folder inside it is a split.
        labels: a CSV of ``path,label`` rows (paths relative to ``root``) giving every image's
            label, instead of class folders.
        skip_bad: leave out files that cannot be read or decoded, recording them on the version,
            instead of stopping.
        workers: decoding processes; default one per core.

    Raises:
        InputError: no such folder, no split folders, a split without images, a labels file
            that misses an image or names a file that is not one.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: is not a folder")
    loose, split_names = _listing(root)
    if loose:
        raise InputError(
            f"{root}: holds image files directly ({loose[0]}...); {_LAYOUT}, so ROOT's folders "
            "are the splits"
        )
    if not split_names:
        raise InputError(f"{root}: no split folders inside; {_LAYOUT}")
    mapping = read_labels(Path(labels)) if labels is not None else None
    source = SourceFile(path=str(root), format=FOLDER_FORMAT, size=0)
    found = {split: _split_files(root, split) for split in split_names}
    if mapping is not None:
        missing = [f for files, _classes in found.values() for f in files if f not in mapping]
        if missing:
            more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
            raise InputError(
                f"{labels}: no label for {missing[0]}{more}; every image under {root} needs "
                "a path,label row"
            )
    planned = []
    seen: set[str] = set()
    for split, (files, classes) in found.items():
        seen.update(files)
        if mapping is not None:
            classes = [mapping[f][0] for f in files]
        planned.append(
            FolderSplit(
                name=split,
                root=root,
                files=tuple(files),
                labels=tuple(classes),
                source=source,
                skip_bad=skip_bad,
                workers=workers if workers is not None else (os.cpu_count() or 1),
            )
        )
    if mapping is not None:
        unknown = [(line, path) for path, (_label, line) in mapping.items() if path not in seen]
        if unknown:
            line, path = min(unknown)
            raise InputError(
                f"{labels}: line {line}: {path} is not an image file under {root} "
                "(paths are relative to the folder, e.g. train/cat/001.png)"
            )
    return planned
