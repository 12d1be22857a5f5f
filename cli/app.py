"""The ``dsaudit`` command. Each command parses, calls one `catalog` function, and renders.

Errors: the library raises `CatalogError` with a finished sentence; `_command` turns it into
``Error: ...`` on stderr and exit code 2. Exit 1 is reserved for audit gates.
"""

from __future__ import annotations

import csv
import datetime
import functools
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from catalog import __version__, api
from catalog.api import MAX_COUNT
from catalog.check import CHECK_SCHEMA, DEFAULT_SAMPLE
from catalog.db import catalog_file
from catalog.errors import CatalogError, UsageError, escaped
from catalog.model import (
    CONFLICTS_SCHEMA,
    DIFF_SCHEMA,
    DUPS_SCHEMA,
    LISTING_SCHEMA,
    OVERLAP_SCHEMA,
    RECIPES_SCHEMA,
    SHOW_SCHEMA,
    to_json,
)
from catalog.report import DEFAULT_LIMIT, DEFAULT_THUMBNAILS, REPORT_SCHEMA, FailOn
from catalog.report_render import to_html, to_markdown
from cli import render

app = typer.Typer(
    name="dsaudit",
    help=(
        "Audit image datasets for leaks between splits and versions.\n\n"
        "dsaudit keeps a catalog (a SQLite file by default) of every image of every dataset "
        "version: its exact digest and provenance. Overlaps are SQL joins, not O(n^2) loops.\n\n"
        "Start with `dsaudit demo`, then `dsaudit ingest` your own data."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Help is plain text: "[@VERSION]" in a usage line must not be read as rich markup.
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])


def _stdout() -> Console:
    # No markup: labels, file names, notes and names come from the data, and "[/]" or
    # "[red]" in one would crash the command or vanish (nothing here is written as markup).
    return Console(soft_wrap=False, markup=False)


def _stderr() -> Console:
    return Console(stderr=True, markup=False)


def _command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose `CatalogError`s become one line on stderr and exit code 2."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return function(*a, **kw)
            except CatalogError as exc:
                # A Text, not markup: file names and messages may hold "[...]".
                message = Text.assemble(("Error:", "bold red"), f" {escaped(str(exc))}")
                _stderr().print(message, highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None

        app.command(*args, **kwargs)(wrapper)
        return function

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsaudit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="DSAUDIT_DB",
            help="Catalog: a file path (SQLite) or a SQLAlchemy URL. Default ./dsaudit.db.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = db


@contextmanager
def _progress() -> Iterator[api.ProgressCallback]:
    """A rich progress display on stderr, fed by the library's ``on_progress`` callback.

    It starts with the first report, so a command that fails before any work prints only its
    error; one that fails midway erases its bars and leaves the one line of the error.
    """
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    progress: Progress | None = None
    tasks: dict[str, TaskID] = {}

    def on_progress(task: str, advance: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(*columns, console=_stderr(), transient=False)
            progress.start()
        # A task seen again after it finished is the next run of it (the demo ingests twice):
        # a new bar, not the old one past its total.
        finished = {t.id for t in progress.tasks if t.finished}
        if task not in tasks or (advance > 0 and tasks[task] in finished):
            tasks[task] = progress.add_task(task, total=total)
        progress.advance(tasks[task], advance)

    try:
        yield on_progress
    except BaseException:
        # A failed run leaves no bars behind: its error stays the one line on stderr. The live
        # display is stopped on its own: `Progress.stop` would end a stderr that is not a
        # terminal (a CI log) with an empty line above the error.
        if progress is not None:
            progress.live.transient = True
            progress.live.stop()
        raise
    else:
        if progress is not None:
            progress.stop()


def _dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


RecipeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--recipe",
        "-r",
        help="Near-duplicate recipe(s) to use (see `dsaudit recipes`). Default: all.",
        show_default=False,
    ),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        help="Near distance threshold (0-1) for the one --recipe; default the recipe's own.",
        show_default=False,
    ),
]
ExactOption = Annotated[bool, typer.Option("--exact", help="Exact copies only, no near tiers.")]


OneRecipeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--recipe",
        "-r",
        help="The recipe whose near pairs count. Default: the catalog's first (pixel-v1 in a "
        "catalog with the default recipes).",
        metavar="RECIPE",
        show_default=False,
    ),
]


def _one_recipe(command: str, recipes: list[str] | None) -> str | None:
    """The one recipe of a command that uses one; a repeated -r was silently the last."""
    named = list(dict.fromkeys(recipes or ()))
    if len(named) > 1:
        raise UsageError(
            f"{command} uses one recipe, and --recipe names {len(named)} ({', '.join(named)}): "
            "give one, or run it once per recipe"
        )
    return named[0] if named else None


def _exact_alone(exact: bool, recipe: object, threshold: float | None) -> None:
    """Refuse --exact beside what only near findings use."""
    if exact and recipe:
        raise UsageError("--exact and --recipe contradict each other; choose one")
    if exact and threshold is not None:
        raise UsageError(
            "--exact and --threshold contradict each other (a threshold is a near recipe's); "
            "choose one"
        )


def _recipes(
    names: list[str] | None, exact: bool, threshold: float | None = None
) -> list[str] | None:
    """The recipes a query uses: none with --exact, each named one once, or all (None)."""
    _exact_alone(exact, names, threshold)
    return [] if exact else (None if names is None else list(dict.fromkeys(names)))


@_command()
def ingest(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. notmnist.")],
    version: Annotated[str, typer.Argument(help="New version tag, e.g. v1 (immutable).")],
    sources: Annotated[
        list[Path] | None,
        typer.Argument(
            help=".npz, .npy or (with --allow-pickle) pickle files; or one image folder "
            "ROOT laid out ROOT/<split>/<class>/*.png (or ROOT/<split>/*.png, unlabelled).",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split",
            "-s",
            help="NAME=ARRAY[:LABELS]: which array (a key in a source, or a .npy file) is "
            "which split. Repeatable. Without it, names like x_train/y_train are recognised.",
            show_default=False,
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(help="Accept pickle files and object arrays (they can run code: trust them)."),
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.csv",
            help="Image folders: labels from a CSV of path,label rows (paths relative to ROOT, "
            "e.g. train/001.png) instead of class folders. Every image needs one.",
            show_default=False,
        ),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Image folders: leave out files that cannot be read or decoded, and record "
            "them on the version (dsaudit ls, dsaudit report), instead of stopping.",
        ),
    ] = False,
    note: Annotated[str | None, typer.Option(help="Free text kept on the version.")] = None,
    parent: Annotated[
        str | None,
        typer.Option(help="Tag of the version this one derives from. Default: the latest."),
    ] = None,
    exact_only: Annotated[
        bool,
        typer.Option(
            "--exact-only",
            help=(
                "Exact digests only: no near-duplicate signatures (faster). For a catalog "
                "without recipes, which then stays exact-only; refused by one with recipes."
            ),
        ),
    ] = False,
    recipes: Annotated[
        list[str] | None,
        typer.Option(
            "--recipe",
            "-r",
            metavar="NAME",
            help="At a catalog's first ingest: a near-duplicate recipe to sign with "
            "(repeatable; default pixel-v1 and phash256-v2; also pixshift-v1, fmag256-v1, "
            "phash256-v1; README: Near duplicates). "
            "Add pixshift-v1 to find 1-pixel shifts and 2x down-up copies of small images. A "
            "catalog keeps its recipes: later ingests sign with the same ones, and a recipe "
            "new to a catalog that holds images is refused.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Add a dataset version to the catalog from numpy files or an image folder.

    Each image is digested (exact content) and recorded with its label and provenance
    (file, array, row; or an image file's path and sha256). Image files are decoded in
    parallel and canonicalised first (README: "Ingest an image folder"); a file that cannot be
    decoded stops the ingest, naming it, unless --skip-bad is given. New images get
    near-duplicate signatures and LSH band keys under every recipe; their band keys are joined
    against the catalog and candidates verified exactly. Last, the version's overlap report is
    computed and stored with it, for `dsaudit overlap`. The version appears all at once when
    ingest finishes; an interrupted ingest leaves the catalog as it was.

    Example:

        dsaudit ingest notmnist v1 notMNIST.npz

        dsaudit ingest mnist v1 --split train=x_train.npy:y_train.npy --split test=x_test.npy

        dsaudit ingest pets v1 pets/ --skip-bad

        dsaudit ingest pets v2 pets/ --labels pets/labels.csv

        dsaudit --db glyphs.db ingest glyphs v1 glyphs.npz -r pixel-v1 -r phash256-v2 -r pixshift-v1
    """
    planned = api.plan(
        sources or [], split or [], allow_pickle=allow_pickle, labels=labels, skip_bad=skip_bad
    )
    with ExitStack() as after:
        with _progress() as on_progress:
            result = api.ingest(
                ctx.obj,
                dataset,
                version,
                planned,
                note=note,
                parent=parent,
                on_progress=on_progress,
                near=not exact_only,
                recipes=recipes,
            )
            # Committed: a Ctrl-C or SIGTERM no longer stops the ingest from reporting it
            # (or the same command run again would be refused as a version that exists).
            after.enter_context(_signals_held())
        if as_json:
            _dump_json(to_json(result, schema="dsaudit.ingest/1"))
        else:
            _stdout().print(render.ingest_result(result))


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored until the block ends, then their handlers restored (in
    the main thread only: elsewhere Python sets no handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {number: signal.signal(number, signal.SIG_IGN) for number in _STOPS}
    try:
        yield
    finally:
        for number, handler in held.items():
            signal.signal(number, handler)


_STOPS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a command (`cli._terminated` makes SIGTERM unwind like Ctrl-C)."""


@_command("ls")
def list_command(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List datasets, their versions and splits, with item and distinct-image counts.

    Example:

        dsaudit ls notmnist
    """
    listing = api.list_catalog(ctx.obj, dataset)
    if as_json:
        _dump_json(to_json(listing, schema=LISTING_SCHEMA))
    else:
        _stdout().print(render.listing(listing))


@_command()
def overlap(
    ctx: typer.Context,
    refs: Annotated[
        list[str],
        typer.Argument(
            help="DATASET[@VERSION][:SPLIT]; several compare across versions and datasets."
        ),
    ],
    limit: Annotated[
        int, typer.Option(help="Label conflicts listed in detail.", min=0, max=MAX_COUNT)
    ] = 20,
    recipe: RecipeOption = None,
    threshold: ThresholdOption = None,
    exact: ExactOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (see README).")] = False,
) -> None:
    """Leakage between splits: exact and near leakage matrices, duplicates, label conflicts.

    For every ordered pair of splits (A, B): how many items of A have an exact copy in B, and
    that as a share of A ("3.3 % of test has a copy in train"). Inside each split: duplicate
    groups and redundant copies. Across all: images that carry more than one label. Near
    tiers (one per recipe) count the items of A with no exact copy in B but a near copy there.

    One whole version, as here, is read from the report its ingest stored (fast at any size);
    other refs, --recipe, --threshold, --exact or --limit above 20 are computed as asked.

    Example:

        dsaudit overlap notmnist@v1

        dsaudit overlap notmnist@v1 notmnist@v2:test
    """
    report = api.overlap(
        ctx.obj,
        refs,
        limit=limit,
        recipes=_recipes(recipe, exact, threshold),
        threshold=threshold,
    )
    if as_json:
        _dump_json(to_json(report, schema=OVERLAP_SCHEMA))
    else:
        _stdout().print(render.overlap(report))


@_command()
def dups(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="DATASET[@VERSION][:SPLIT], one or more.")],
    recipes: OneRecipeOption = None,
    threshold: ThresholdOption = None,
    exact: ExactOption = False,
    limit: Annotated[
        int, typer.Option(help="Groups listed in detail, largest first.", min=0, max=MAX_COUNT)
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (see README).")] = False,
) -> None:
    """Duplicate groups inside each split: exact copies and near copies, joined.

    A group is a connected component of exact copies and near pairs within the threshold, so
    a chain of near copies is one group; "max distance" shows how far apart its ends are.

    Example:

        dsaudit dups notmnist@v1:train

        dsaudit dups notmnist --recipe phash256-v2 --threshold 0.05
    """
    recipe = _one_recipe("dups", recipes)
    _exact_alone(exact, recipe, threshold)
    report = api.duplicate_groups(
        ctx.obj, refs, recipe=recipe, threshold=threshold, exact_only=exact, limit=limit
    )
    if as_json:
        _dump_json(to_json(report, schema=DUPS_SCHEMA))
    else:
        _stdout().print(render.dups(report))


@_command()
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="The older ref, e.g. notmnist@v1.")],
    b: Annotated[str, typer.Argument(help="The newer ref, e.g. notmnist@v2.")],
    recipes: OneRecipeOption = None,
    threshold: ThresholdOption = None,
    exact: ExactOption = False,
    limit: Annotated[int, typer.Option(help="Relabelled items listed.", min=0, max=MAX_COUNT)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (see README).")] = False,
) -> None:
    """What changed between two versions (or datasets): per split and between splits.

    Per split (matched by name): images kept, added, removed, and removed images replaced by a
    near copy. Between splits: images that moved, and images copied into another split while
    staying (a leak the new version introduced). Items whose label changed.

    Example:

        dsaudit diff notmnist@v1 notmnist@v2
    """
    recipe = _one_recipe("diff", recipes)
    _exact_alone(exact, recipe, threshold)
    report = api.version_diff(
        ctx.obj, a, b, recipe=recipe, threshold=threshold, exact_only=exact, limit=limit
    )
    if as_json:
        _dump_json(to_json(report, schema=DIFF_SCHEMA))
    else:
        _stdout().print(render.diff(report))


@_command("conflicts")
def conflicts_command(
    ctx: typer.Context,
    refs: Annotated[
        list[str],
        typer.Argument(help="DATASET[@VERSION][:SPLIT]; several compare across them."),
    ],
    recipe: RecipeOption = None,
    threshold: ThresholdOption = None,
    exact: ExactOption = False,
    limit: Annotated[
        int, typer.Option(help="Conflicts listed in detail.", min=0, max=MAX_COUNT)
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (see README).")] = False,
) -> None:
    """Label conflicts: the same image, or a near copy, carrying different labels.

    Within a split, across splits, and across versions or datasets when several refs are
    given; every item with its provenance (file, array, row).

    Example:

        dsaudit conflicts notmnist@v1

        dsaudit conflicts notmnist@v1 notmnist@v2 --recipe phash256-v2
    """
    report = api.label_conflicts(
        ctx.obj,
        refs,
        recipes=_recipes(recipe, exact, threshold),
        threshold=threshold,
        limit=limit,
    )
    if as_json:
        _dump_json(to_json(report, schema=CONFLICTS_SCHEMA))
    else:
        _stdout().print(render.conflicts(report))


@_command()
def show(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(help="DATASET[@VERSION]:SPLIT:POSITION, or a digest prefix (6+ hex)."),
    ],
    limit: Annotated[
        int, typer.Option(help="Near copies listed per recipe.", min=0, max=MAX_COUNT)
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON (see README).")] = False,
) -> None:
    """One image: every item holding it, its near copies, and the picture itself.

    The picture is read again from the source file the item came from (when it is still
    there, and the row read back still has the catalogued digest) and drawn with half blocks,
    two pixels per character cell.

    Example:

        dsaudit show notmnist@v1:test:197

        dsaudit show 3a9592064df7
    """
    report = api.show_image(ctx.obj, target, limit=limit)
    if as_json:
        _dump_json(to_json(report, schema=SHOW_SCHEMA))
    else:
        _stdout().print(render.show(report))


@_command("recipes")
def recipes_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the near-duplicate recipes in the catalog and what their thresholds mean.

    For each recipe: its family, LSH bands x rows, the radius within which pairs are stored,
    the default threshold, and the probability that a pair at a given distance shares a band
    key and so is found at all (the LSH S-curve).

    Example:

        dsaudit recipes
    """
    recipes = api.list_recipes(ctx.obj)
    if as_json:
        _dump_json({"schema": RECIPES_SCHEMA, "recipes": to_json(recipes)})
    else:
        _stdout().print(render.recipes(recipes))


@_command()
def sql(
    ctx: typer.Context,
    statement: Annotated[str, typer.Argument(help="One SQL statement; the catalog is read-only.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Rows as a JSON list of objects.")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Rows as CSV with a header.")] = False,
    max_rows: Annotated[
        int | None,
        typer.Option(help="Stop after this many rows.", min=1, max=MAX_COUNT, show_default=False),
    ] = None,
) -> None:
    """Run read-only SQL on the catalog (views: v_item, v_split, v_exact_overlap, v_near_pair,
    v_near_overlap; see README).

    The connection itself is read-only: statements that write, attach databases or change
    settings fail.

    Example:

        dsaudit sql "SELECT split, COUNT(*) FROM v_item GROUP BY split"
    """
    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    result = api.run_sql(ctx.obj, statement, max_rows=max_rows)
    if as_json:
        _dump_json(_sql_objects(result.columns, result.rows))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        _stdout().print(render.sql_table(result))


def _sql_objects(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as JSON objects: one key per column, and only values JSON has.

    Decimals become numbers, dates and times ISO 8601 strings, and infinite or NaN floats the
    strings "Infinity", "-Infinity" and "NaN" (JSON has no such numbers).

    Raises:
        UsageError: two columns share a name; one object cannot hold both.
    """
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise UsageError(
                f"--json needs distinct column names, and '{name}' names two columns: name "
                f"them apart with AS (e.g. s.id AS split_id), or use --csv"
            )
        seen.add(name)
    return [{name: _json_value(v) for name, v in zip(columns, row, strict=True)} for row in rows]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        if not value.is_finite():
            return _json_value(float(value))
        if value.is_zero():
            return 0
        if abs(value.adjusted()) > 300:  # beyond a float's range, and a long int's printing
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | memoryview):  # inside arrays (top-level ones are hex already)
        return bytes(value).hex()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):  # PostgreSQL arrays
        return [_json_value(v) for v in value]
    if isinstance(value, dict):  # json and jsonb
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)  # intervals, UUIDs...: as the driver prints them


@_command()
def check(
    ctx: typer.Context,
    sample: Annotated[
        int,
        typer.Option(
            help="Items whose digests are recomputed from their source files (0: none).",
            min=0,
            max=MAX_COUNT,
        ),
    ] = DEFAULT_SAMPLE,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the sample: the same seed draws the same items.", min=0, max=2**63 - 1
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Verify the catalog; exit 1 if anything is wrong.

    Checks SQLite's integrity and foreign keys; orphans (images no item holds; signatures, band
    keys and pairs of missing images or recipes); pairs stored out of order; each recipe's
    fingerprint recomputed from its stored parameters; every informative image an item holds
    signed under every recipe; one band key per LSH band for every signed informative image;
    the digests of a seeded sample of items read again from their source files, where those
    are present and unchanged (same sha256); and each version's stored overlap report against
    the one computed now.

    Exit codes: 0 all checks pass, 1 a problem was found, 2 usage error (e.g. no catalog).

    Example:

        dsaudit check

        dsaudit --db team.db check --sample 1000 --json
    """
    report = api.check(ctx.obj, sample=sample, seed=seed)
    if as_json:
        data = to_json(report, schema=CHECK_SCHEMA)
        data["ok"] = report.ok
        _dump_json(data)
    else:
        _stdout().print(render.check_report(report))
    if not report.ok:
        raise typer.Exit(1)


def _outputs(catalog: str | None, **files: str | None) -> dict[str, str]:
    """The report files asked for; at most one may be ``-`` (stdout). Checked before any query,
    so a typo in a path costs nothing, and none may be the catalog's own file."""
    asked = {kind: path for kind, path in files.items() if path is not None}
    if sum(path == "-" for path in asked.values()) > 1:
        raise UsageError("only one of --html, --json and --markdown can go to stdout ('-')")
    own = catalog_file(catalog)
    seen: dict[Path, str] = {}
    for kind, path in asked.items():
        if path == "-":
            continue
        where = Path(path).resolve()
        if own is not None and where in {own, Path(f"{own}-wal"), Path(f"{own}-shm")}:
            raise UsageError(f"--{kind} {path}: is the catalog's own file; name another")
        if where in seen:
            raise UsageError(
                f"--{seen[where]} and --{kind} both name {path}: one would overwrite the other"
            )
        seen[where] = kind
        if not where.parent.is_dir():
            raise UsageError(f"--{kind} {path}: the directory {Path(path).parent} does not exist")
        if where.is_dir():
            raise UsageError(f"--{kind} {path}: is a directory; name a file in it")
        if not os.access(where if where.exists() else where.parent, os.W_OK):
            raise UsageError(f"--{kind} {path}: cannot write there (permission denied)")
    return asked


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    _stderr().print(Text(f"Wrote {path} ({len(text.encode()):,} bytes)"), highlight=False)


@_command("report")
def report_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="What to audit: DATASET[@VERSION][:SPLIT].")],
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            "-a",
            help="An older ref: adds what changed from it to REF. Repeatable.",
            show_default=False,
        ),
    ] = None,
    html: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also write one self-contained HTML page with the pictures side by side. "
            "'-': stdout.",
            show_default=False,
        ),
    ] = None,
    json_file: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="FILE",
            help=f"Also write JSON (schema {REPORT_SCHEMA}; see README). '-' means stdout.",
            show_default=False,
        ),
    ] = None,
    markdown: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also write a short Markdown summary for a pull-request comment. '-': stdout.",
            show_default=False,
        ),
    ] = None,
    max_leakage: Annotated[
        float | None,
        typer.Option(
            metavar="RATE",
            help="Gate: exit 1 when any split has more than RATE (a fraction: 0.01 = 1 %) of "
            "its items with an exact or near copy in another split.",
            show_default=False,
        ),
    ] = None,
    fail_on: Annotated[
        list[FailOn] | None,
        typer.Option(
            "--fail-on",
            help="Gate: exit 1 when there is any finding of this kind. Repeatable.",
            show_default=False,
        ),
    ] = None,
    recipe: RecipeOption = None,
    exact: ExactOption = False,
    limit: Annotated[
        int,
        typer.Option(
            help="Findings listed per section; counts are always complete.", min=0, max=MAX_COUNT
        ),
    ] = DEFAULT_LIMIT,
    thumbnails: Annotated[
        int,
        typer.Option(
            help="Pictures read back and embedded in the HTML at most.", min=0, max=MAX_COUNT
        ),
    ] = DEFAULT_THUMBNAILS,
) -> None:
    """The audit of a dataset version in one report: terminal, HTML, JSON, Markdown; CI gates.

    Shows what REF covers; the exact and near leakage matrices with rates; the images copied
    across splits and the closest near pairs; duplicate groups inside splits; label conflicts;
    low-information images; what changed from each --against ref; the recipes and thresholds
    used. The top findings are drawn from their source files. Counts are always complete;
    --limit bounds the findings listed, --thumbnails the pictures.

    Exit codes: 0 when every gate passes (or none is given), 1 when a gate trips (--max-leakage,
    --fail-on), 2 on a usage error.

    Example:

        dsaudit report notmnist@v2 --against notmnist@v1 --html report.html

        dsaudit report notmnist --json report.json --max-leakage 0.001 --fail-on conflicts
    """
    outputs = _outputs(ctx.obj, html=html, json=json_file, markdown=markdown)
    terminal = "-" not in outputs.values()
    made = api.report(
        ctx.obj,
        ref,
        against=list(dict.fromkeys(against or [])),  # each older version diffed once
        recipes=_recipes(recipe, exact),
        limit=limit,
        thumbnails=thumbnails,
        pictures=terminal or "html" in outputs,
        max_leakage=max_leakage,
        fail_on=fail_on or [],
    )
    if terminal:
        _stdout().print(render.report(made))
    for kind, path in outputs.items():
        if kind == "html":
            _write(path, to_html(made))
        elif kind == "json":
            _write(
                path, json.dumps(to_json(made, REPORT_SCHEMA), indent=2, ensure_ascii=False) + "\n"
            )
        else:
            _write(path, to_markdown(made))
    tripped = [gate for gate in made.gates if gate.tripped]
    for gate in tripped:
        _stderr().print(
            Text.assemble(("Gate tripped:", "bold red"), f" {gate.gate}: {gate.message}"),
            highlight=False,
            soft_wrap=True,
        )
    if tripped:
        raise typer.Exit(1)


@_command()
def demo(
    directory: Annotated[
        Path, typer.Argument(help="Where the sample files and demo.db go (demo.db is remade).")
    ] = Path("dsaudit-demo"),
    seed: Annotated[
        int, typer.Option(help="Seed of the generated data.", min=0, max=2**63 - 1)
    ] = 0,
) -> None:
    """Generate a notMNIST-like dataset with planted leaks, ingest and audit it.

    Letters A-J (28x28, rendered offline with Pillow) in train/valid/test, two versions, with
    planted exact copies across splits, duplicates inside train, conflicting labels, blank
    images, near copies in test (noise, brightness, a 1-pixel shift, JPEG, 2x down-up) and a
    second version that moves and copies train images into test. The catalog is made with the
    default recipes and pixshift-v1, which finds the shifted and down-up copies. Prints the
    audit and every planted problem beside what was found; exits 1 if anything was missed.

    The catalog is always DIRECTORY/demo.db: the global --db and DSAUDIT_DB are not used, so
    a demo never writes into a catalog of yours.

    Example:

        dsaudit demo

        dsaudit --db dsaudit-demo/demo.db overlap notmnist@v1 notmnist@v2:test
    """
    with _progress() as on_progress:
        run = api.run_demo(directory, seed=seed, on_progress=on_progress)
    out = _stdout()
    out.print(f"Wrote {', '.join(str(p) for p in run.files.values())}")
    for result in run.ingested:
        out.print(render.ingest_result(result))
    for tag, report in run.reports.items():
        out.rule(f"Audit of notmnist@{tag}")
        out.print(render.overlap(report))
    out.rule("Across versions: v1 train against v2 test")
    out.print(render.leakage_matrix(run.cross))
    out.rule("What changed from v1 to v2")
    out.print(render.diff(run.diff))
    out.rule()
    out.print(render.demo_checks(run))
    out.print(
        f"Explore it: dsaudit --db {run.catalog} ls notmnist; "
        f'dsaudit --db {run.catalog} sql "SELECT * FROM v_exact_overlap LIMIT 5"; '
        f"dsaudit --db {run.catalog} report notmnist@v2 --against notmnist@v1 "
        f"--html {run.directory / 'report.html'}",
        soft_wrap=True,
    )
    if not run.all_found:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``dsaudit`` script."""
    app()
