"""The Python API: every command-line feature as one call, for notebooks and scripts.

Each function takes ``db``: a catalog path or URL (None means ``$DSAUDIT_DB`` or
``./dsaudit.db``), or an `Engine` from `catalog.db.open_catalog` to reuse one. Results are the
frozen dataclasses of `catalog.model`, usable after the call returns.

    from catalog import api
    api.ingest("cat.db", "mnist", "v1", {"train": (x_train, y_train), "test": (x_test, y_test)})
    api.ingest("cat.db", "pets", "v1", "pets/")  # an image folder: pets/train/cat/001.png...
    report = api.overlap("cat.db", ["mnist@v1"])
    report.pair("mnist@v1:test", "mnist@v1:train").rate
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DatabaseError

from catalog import queries
from catalog.check import DEFAULT_SAMPLE, CheckReport, CheckResult
from catalog.check import check as _check
from catalog.db import (
    describe,
    open_catalog,
    reading,
    refresh_statistics,
    resolve_url,
    write_retrying,
)
from catalog.errors import UsageError, require_utf8
from catalog.ingest import IngestResult, ProgressCallback, check_names, version_committed
from catalog.ingest import ingest as _ingest
from catalog.loaders import (
    PlannedSplit,
    SplitSpec,
    from_memory,
    parse_split_spec,
    plan_arrays,
    plan_folder,
)
from catalog.model import (
    ConflictsReport,
    DiffReport,
    DupsReport,
    Listing,
    OverlapReport,
    RecipeInfo,
    ShowReport,
)
from catalog.near import register_recipes, resolve_recipes, unregister_recipes
from catalog.report import (
    DEFAULT_LIMIT,
    DEFAULT_THUMBNAILS,
    AuditReport,
    FailOn,
    assemble,
    collect_pictures,
    validate_gates,
)
from catalog.sql import SqlResult
from catalog.sql import run_sql as _run_sql

__all__ = [
    "CheckReport",
    "CheckResult",
    "ProgressCallback",
    "check",
    "duplicate_groups",
    "label_conflicts",
    "ingest",
    "list_catalog",
    "list_recipes",
    "overlap",
    "plan",
    "report",
    "run_demo",
    "run_sql",
    "show_image",
    "version_diff",
]

if TYPE_CHECKING:
    from catalog.demo import DemoRun

ArraySplits = Mapping[str, np.ndarray | tuple[np.ndarray, np.ndarray | None]]
Catalog: TypeAlias = str | os.PathLike[str] | Engine | None
"""Where the catalog is: a path (a `pathlib.Path` too) or URL, an open engine, or None for
``$DSAUDIT_DB`` or ``./dsaudit.db`` (`catalog.db.resolve_url`)."""


@contextmanager
def _engine(db: Catalog, *, create: bool) -> Iterator[Engine]:
    if isinstance(db, Engine):
        yield db
        return
    engine = open_catalog(db, create=create)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _reading(db: Catalog) -> Iterator[Connection]:
    with _engine(db, create=False) as engine, reading(engine) as conn:
        # One read transaction: every query of a report sees the same snapshot.
        yield conn


def plan(
    sources: Sequence[str | Path],
    splits: Sequence[str | SplitSpec] = (),
    *,
    allow_pickle: bool = False,
    labels: str | Path | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
) -> list[PlannedSplit]:
    """Which arrays of which files, or which image files of a folder, become which splits.

    Reads only headers (arrays) or the folder's listing (images are decoded at ingest).

    Args:
        sources: .npz, .npy or pickle files; or one image folder (``ROOT/<split>/<class>/*``).
        splits: ``"NAME=ARRAY[:LABELS]"`` strings or `SplitSpec`s; empty means recognise
            splits by array names (``x_train``/``y_train``, ``train_dataset``...).
        allow_pickle: accept pickles (they can run arbitrary code when loaded).
        labels: image folders only: a CSV of ``path,label`` rows, paths relative to the folder.
        skip_bad: image folders only: leave out (and record) files that cannot be decoded.
        workers: image folders only: decoding processes (default one per core).

    Raises:
        UsageError: a folder given with other sources or ``splits``; folder options with arrays.
    """
    # One source or one spec alone is one, not a sequence of characters.
    paths = [Path(s) for s in ([sources] if isinstance(sources, str | Path) else sources)]
    if isinstance(splits, str):
        splits = [splits]
    for named in [*paths, *([] if labels is None else [labels])]:
        require_utf8(named)
    folders = [p for p in paths if p.is_dir()]
    if folders:
        if len(paths) > 1 or splits:
            raise UsageError(
                f"{folders[0]}: is a folder; an image folder is ingested on its own, without "
                "other sources or --split (its folders are the splits)"
            )
        return list(
            plan_folder(
                folders[0],
                None if labels is None else Path(labels),
                skip_bad=skip_bad,
                workers=workers,
            )
        )
    if labels is not None or skip_bad:
        raise UsageError("--labels and --skip-bad apply to image folders only, not to arrays")
    specs = [parse_split_spec(s) if isinstance(s, str) else s for s in splits]
    for spec in specs:
        require_utf8(spec.images)
        if spec.labels is not None:
            require_utf8(spec.labels)
    return list(plan_arrays(paths, specs, allow_pickle=allow_pickle))


def ingest(
    db: Catalog,
    dataset: str,
    version: str,
    splits: Sequence[PlannedSplit] | ArraySplits | str | Path,
    *,
    note: str | None = None,
    parent: str | None = None,
    on_progress: ProgressCallback | None = None,
    near: bool = True,
    recipes: Sequence[str] | None = None,
    labels: str | Path | None = None,
    skip_bad: bool = False,
) -> IngestResult:
    """Add ``dataset@version`` in one transaction: all of it becomes visible, or none.

    Args:
        db: catalog path, URL or engine; created if missing.
        splits: from `plan`; or arrays in memory: ``{"train": (images, labels), "test": images}``
            with images shaped (N, H, W) or (N, H, W, C); or the path of an image folder.
        near: sign new images under the catalog's recipes and find their near pairs; False
            (exact only) is for a catalog without recipes, which then stays exact-only.
        recipes: recipe names to make a new catalog with (default: `DEFAULT_RECIPES`); a
            catalog keeps its recipes, see `catalog.near.resolve_recipes`.
        labels, skip_bad: for an image folder given by path, see `plan`.
    """
    if isinstance(splits, str | Path):
        planned = plan([splits], labels=labels, skip_bad=skip_bad)
    elif labels is not None or skip_bad:
        raise UsageError(
            "labels and skip_bad apply to an image folder given by path; give them to plan() "
            "for planned splits"
        )
    elif isinstance(splits, Mapping):
        planned = list(from_memory(splits))
    else:
        planned = list(splits)
    recipes = _names_or_none(recipes)
    if recipes is not None and not near:
        raise UsageError("recipes were named for an exact-only ingest; drop one of the two")
    check_names(dataset, version, planned)
    # What `_ingest` returned, and whether its transaction is known to have committed: a
    # Ctrl-C or SIGTERM (`cli._terminated`) that lands after the commit (in the commit's
    # return, the statistics, the last connection's close and checkpoint) must not report a
    # committed version as interrupted, or the same command run again is refused.
    attempts: list[IngestResult] = []
    committed = False

    def attempt(conn: Connection) -> IngestResult:
        result = _ingest(
            conn,
            dataset,
            version,
            planned,
            note=note,
            parent=parent,
            on_progress=on_progress,
            recipes=resolve_recipes(conn, recipes, near=near),
        )
        attempts.append(result)
        return result

    try:
        with _engine(db, create=True) as engine:
            registered: list[int] = []
            if near and engine.dialect.name == "postgresql":
                # Recipes are registered in a short transaction of their own: inside the
                # ingest's, a second ingest into a new catalog would wait for the first one's
                # commit. If the ingest then fails, they are taken back (`unregister_recipes`).
                registered = write_retrying(engine, lambda conn: register_recipes(conn, recipes))
            try:
                # Retried from the start if it lost a race with another writer (PostgreSQL).
                write_retrying(engine, attempt)
                committed = True
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit) and attempts:
                    committed = _is_committed(engine, attempts[-1])
                if registered and not committed:
                    with suppress(Exception):  # the ingest's own error is the report
                        write_retrying(engine, lambda conn: unregister_recipes(conn, registered))
                raise
            # Committed: a signal now stops only the statistics (autovacuum refreshes them
            # later), and the ingest is reported as done.
            with suppress(KeyboardInterrupt, SystemExit):
                refresh_statistics(engine)
    except (KeyboardInterrupt, SystemExit):
        if not committed:
            raise
    return attempts[-1]


def _is_committed(engine: Engine, result: IngestResult) -> bool:
    """Whether an ingest interrupted at its end had committed its version: asked of the
    catalog, as the signal may have landed during or just after the commit."""
    try:
        with reading(engine) as conn:
            return version_committed(conn, result)
    except (DatabaseError, KeyboardInterrupt, SystemExit):
        return False


def _names(value: str | Sequence[str]) -> list[str]:
    """Refs, recipes or gates: one given alone (a str) is one, not a sequence of characters."""
    return [value] if isinstance(value, str) else list(value)


def _names_or_none(value: str | Sequence[str] | None) -> list[str] | None:
    return None if value is None else _names(value)


MAX_COUNT = 1_000_000_000
"""The largest count an argument may give (``limit``, ``max_rows``, ``sample``, ``thumbnails``,
the command line's too): SQLite's integers stop at 2**63 - 1, and no listing needs more."""


def _count(name: str, value: int, least: int = 0, most: int = MAX_COUNT) -> int:
    """A count argument (``limit``, ``max_rows``), checked as the command line checks it."""
    try:
        number = operator.index(value)  # ints and numpy's integers, not 2.5 or "3"
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or not least <= number <= most:
        raise UsageError(f"{name} must be a whole number from {least} to {most:,}, not {value!r}")
    return number


def list_catalog(db: Catalog, dataset: str | None = None) -> Listing:
    """Datasets, versions and splits with item and distinct-image counts."""
    with _reading(db) as conn:
        return queries.list_catalog(conn, dataset)


def overlap(
    db: Catalog,
    refs: Sequence[str],
    *,
    limit: int = 20,
    recipes: Sequence[str] | None = None,
    threshold: float | None = None,
) -> OverlapReport:
    """Exact and near overlap of every ordered pair of the refs' splits; see `queries.overlap`."""
    with _reading(db) as conn:
        return queries.overlap(
            conn,
            _names(refs),
            limit=_count("limit", limit),
            recipes=_names_or_none(recipes),
            threshold=threshold,
        )


def duplicate_groups(
    db: Catalog,
    refs: Sequence[str],
    *,
    recipe: str | None = None,
    threshold: float | None = None,
    exact_only: bool = False,
    limit: int = 20,
) -> DupsReport:
    """Duplicate groups inside splits (exact copies and near pairs joined)."""
    with _reading(db) as conn:
        return queries.duplicate_groups(
            conn,
            _names(refs),
            recipe=recipe,
            threshold=threshold,
            exact_only=exact_only,
            limit=_count("limit", limit),
        )


def version_diff(
    db: Catalog,
    a: str,
    b: str,
    *,
    recipe: str | None = None,
    threshold: float | None = None,
    exact_only: bool = False,
    limit: int = 20,
) -> DiffReport:
    """What changed from ref ``a`` to ref ``b``; see `queries.version_diff`."""
    with _reading(db) as conn:
        return queries.version_diff(
            conn,
            a,
            b,
            recipe=recipe,
            threshold=threshold,
            exact_only=exact_only,
            limit=_count("limit", limit),
        )


def label_conflicts(
    db: Catalog,
    refs: Sequence[str],
    *,
    recipes: Sequence[str] | None = None,
    threshold: float | None = None,
    limit: int = 20,
) -> ConflictsReport:
    """Images (and near copies) carrying different labels; see `queries.label_conflicts`."""
    with _reading(db) as conn:
        return queries.label_conflicts(
            conn,
            _names(refs),
            recipes=_names_or_none(recipes),
            threshold=threshold,
            limit=_count("limit", limit),
        )


def show_image(db: Catalog, target: str, *, limit: int = 10) -> ShowReport:
    """One image: its items with provenance, its near copies, a preview from its source."""
    with _reading(db) as conn:
        return queries.show_image(conn, target, limit=_count("limit", limit))


def list_recipes(db: Catalog) -> tuple[RecipeInfo, ...]:
    """The catalog's near-duplicate recipes, with what their thresholds mean."""
    with _reading(db) as conn:
        return queries.list_recipes(conn)


def report(
    db: Catalog,
    ref: str,
    *,
    against: Sequence[str] = (),
    recipes: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    thumbnails: int = DEFAULT_THUMBNAILS,
    pictures: bool = False,
    max_leakage: float | None = None,
    fail_on: Sequence[FailOn | str] = (),
) -> AuditReport:
    """The audit report of ``ref``: summary, leakage matrices, copies across splits, duplicate
    groups, label conflicts, low-information images, diffs from ``against``, recipes, gates.

    Args:
        against: older refs, each diffed to ``ref``.
        recipes: near recipes (None: all in the catalog; empty: exact findings only).
        limit: findings listed in detail per section; counts are always complete.
        thumbnails: pictures read back at most (with ``pictures``).
        pictures: read the listed findings' images back from their source files (for HTML
            and terminal previews).
        max_leakage: gate: fail when a split has a larger share of its items (exact or near
            copies) in another split. ``fail_on``: fail on any finding of these kinds.

    ``report.passed`` is False when a gate tripped; ``report.gates`` says why.
    """
    validate_gates(max_leakage)  # before opening anything: a typo costs no query
    with _reading(db) as conn:
        made = assemble(
            conn,
            ref,
            against=_names(against),
            recipes=_names_or_none(recipes),
            limit=_count("limit", limit),
            thumbnails=_count("thumbnails", thumbnails),
            max_leakage=max_leakage,
            fail_on=[fail_on] if isinstance(fail_on, str) else fail_on,
        )
    return collect_pictures(made) if pictures else made


def check(db: Catalog, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> CheckReport:
    """Verify the catalog: integrity, foreign keys, orphans, pair order, recipe fingerprints,
    band keys, and the digests of ``sample`` items (seeded) recomputed from their source files.
    ``report.ok`` is False when anything is wrong; see `catalog.check`."""
    sample, seed = _count("sample", sample), _count("seed", seed, most=2**63 - 1)
    made: CheckReport | None = None
    with _engine(db, create=False) as engine:
        try:
            with reading(engine) as conn:
                made = _check(conn, describe(str(engine.url)), sample=sample, seed=seed)
        except DatabaseError:
            # On a damaged file even the read's COMMIT can fail; the checks ran and say why.
            if made is None:
                raise
    return made


def run_sql(db: Catalog, statement: str, *, max_rows: int | None = None) -> SqlResult:
    """One statement on a read-only connection (enforced by the connection, not by parsing)."""
    url = (
        db.url.render_as_string(hide_password=False) if isinstance(db, Engine) else resolve_url(db)
    )
    rows = None if max_rows is None else _count("max_rows", max_rows, least=1)
    return _run_sql(url, statement, max_rows=rows)


def run_demo(
    directory: str | Path,
    *,
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    db: str | None = None,
) -> DemoRun:
    """Generate the demo dataset, ingest both versions into ``directory/demo.db`` (or the
    empty catalog ``db``), audit it."""
    from catalog.demo import run_demo as _run_demo  # Pillow only loads for the demo

    return _run_demo(Path(directory), seed=seed, on_progress=on_progress, db=db)
