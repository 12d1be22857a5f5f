"""The report model: frozen dataclasses that queries return and renderers draw.

Queries build these; renderers (rich tables in ``cli/``, JSON here) read them. They hold raw
numbers (counts, rates as fractions), never formatted text, and no live database objects, so
they outlive the session that made them.

`to_json` is the one place that names the JSON keys; the README documents them. `from_json`
reads them back (for reports stored in the catalog, `catalog.queries.overlap`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from catalog.errors import NotFoundError
from catalog.loaders.chunk import SkippedFile
from catalog.preview import Preview

OVERLAP_SCHEMA = "dsaudit.overlap/1"
LISTING_SCHEMA = "dsaudit.ls/1"
DUPS_SCHEMA = "dsaudit.dups/1"
RECIPES_SCHEMA = "dsaudit.recipes/1"
DIFF_SCHEMA = "dsaudit.diff/1"
CONFLICTS_SCHEMA = "dsaudit.conflicts/1"
SHOW_SCHEMA = "dsaudit.show/1"
T = TypeVar("T")
SKIPPED_LISTED = 20
"""Skipped files listed per version in ``ls`` and reports (the count is complete)."""


@dataclass(frozen=True)
class SplitInfo:
    """One split of one version, with its sizes."""

    dataset: str
    version: str
    split: str
    split_id: int
    items: int
    images: int

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}:{self.split}"


@dataclass(frozen=True)
class SourceInfo:
    """A file a version was ingested from."""

    path: str
    format: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionInfo:
    dataset: str
    tag: str
    created_at: datetime
    parent: str | None
    note: str | None
    tool_version: str
    splits: tuple[SplitInfo, ...]
    sources: tuple[SourceInfo, ...] = ()
    skipped: int = 0
    """Files left out of this version because they could not be decoded (``--skip-bad``)."""
    skipped_files: tuple[SkippedFile, ...] = ()
    """The first `SKIPPED_LISTED` of them, by path."""

    @property
    def items(self) -> int:
        return sum(s.items for s in self.splits)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    versions: tuple[VersionInfo, ...]
    images: int
    """Distinct images over all versions."""


@dataclass(frozen=True)
class Listing:
    datasets: tuple[DatasetInfo, ...]


@dataclass(frozen=True)
class PairOverlap:
    """Exact overlap of split ``a`` with ``b``: items of ``a`` whose image also occurs in ``b``."""

    a: str
    b: str
    items: int
    images: int
    rate: float
    """``items`` as a fraction of ``a``'s items ("3.3 % of test has a copy in train")."""


@dataclass(frozen=True)
class WithinSplit:
    """Exact duplicates inside one split, and its low-information items."""

    split: str
    groups: int
    """Images that occur at more than one position of the split."""
    items_in_groups: int
    redundant: int
    """Copies beyond the first: the items that could be dropped."""
    largest_group: int
    low_info_items: int


@dataclass(frozen=True)
class ItemRef:
    """Where one item sits and where it came from."""

    split: str
    position: int
    label: str | None
    source_path: str
    source_key: str
    """The array's key, or the file's path relative to its image folder."""
    source_row: int | None
    """The row of the array; None for an image file."""
    source_sha256: str | None = None
    """sha256 of the item's own file (image folders); None for array rows."""


@dataclass(frozen=True)
class LabelConflict:
    """One image that carries more than one label among the audited splits."""

    digest: str
    labels: tuple[str, ...]
    items: tuple[ItemRef, ...]


@dataclass(frozen=True)
class NearConflict:
    """Two images within a recipe's threshold whose items carry different labels."""

    distance: float
    a: tuple[ItemRef, ...]
    b: tuple[ItemRef, ...]


class PairNotFound(NotFoundError, KeyError):
    """`OverlapReport.pair` or `NearTier.pair` of splits the report does not hold (a KeyError
    too, as a mapping's lookup)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


def _pair(pairs: tuple[PairOverlap, ...], a: str, b: str) -> PairOverlap:
    for pair in pairs:
        if pair.a == a and pair.b == b:
            return pair
    names = sorted({p.a for p in pairs})
    raise PairNotFound(
        f"no pair ({a}, {b}) in this report: its splits are {', '.join(names) or 'none'} "
        "(named in full, dataset@version:split; a split has no pair with itself)"
    )


@dataclass(frozen=True)
class NearTier:
    """Near overlap under one recipe: items of ``a`` with no exact copy in ``b`` but a near copy
    there (verified distance <= ``threshold``)."""

    recipe: str
    threshold: float
    pairs: tuple[PairOverlap, ...]
    conflict_images: int
    """Images whose near copies (among the audited splits) carry another label."""
    conflicts: tuple[NearConflict, ...] = ()
    """The closest such pairs, at most the query's ``limit``."""
    capped_buckets: int | None = 0
    """Buckets over the blow-up guard's cap in the ingests that brought in the audited images,
    and so stored their pairs (`catalog.queries.capped_buckets`): when not 0, the counts above
    may be lower bounds; None when some of those images came in before schema revision 0008,
    which kept no count."""

    def pair(self, a: str, b: str) -> PairOverlap:
        """The overlap of split ref ``a`` with ``b``, both as the report names them."""
        return _pair(self.pairs, a, b)


@dataclass(frozen=True)
class OverlapReport:
    splits: tuple[SplitInfo, ...]
    pairs: tuple[PairOverlap, ...]
    within: tuple[WithinSplit, ...]
    conflict_images: int
    conflict_items: int
    conflicts: tuple[LabelConflict, ...]
    """The first conflicts in digest order, at most the query's ``limit``."""
    near: tuple[NearTier, ...] = ()

    def pair(self, a: str, b: str) -> PairOverlap:
        """The overlap of split ref ``a`` with ``b``, both as the report names them."""
        return _pair(self.pairs, a, b)


@dataclass(frozen=True)
class ConflictsReport:
    """Label conflicts among some splits: exact (one image, several labels) and near."""

    splits: tuple[SplitInfo, ...]
    exact_images: int
    exact_items: int
    exact: tuple[LabelConflict, ...]
    """The first exact conflicts in digest order, at most the query's ``limit``."""
    near: tuple[NearTier, ...]
    """Per recipe; only ``conflict_images`` and ``conflicts`` are filled."""


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe stored in the catalog, and what its threshold means."""

    name: str
    family: str
    fingerprint: str
    radius: float
    default_threshold: float
    bands: int
    rows: int
    images: int
    """Images signed under it."""
    pairs: int
    """Pairs stored (distance <= radius)."""
    candidate_probability: tuple[tuple[float, float], ...]
    """(distance, probability that a pair at that distance shares a band key and is found)."""
    probability_is_bound: bool
    """The probabilities are a worst-case lower bound (measured detection is higher)."""
    params: str
    """The full parameters, canonical JSON."""
    capped_buckets: int | None = 0
    """Buckets over the blow-up guard's cap, summed over the catalog's ingests; None when some
    of them predate schema revision 0008 and kept no count."""
    largest_bucket: int | None = 0
    """The largest bucket any of those ingests met; None when ``capped_buckets`` is (an
    ingest before schema revision 0008 kept no count of its buckets either)."""


@dataclass(frozen=True)
class GroupMember:
    image_digest: str
    items: tuple[ItemRef, ...]


@dataclass(frozen=True)
class DuplicateGroup:
    """Images of one split joined by exact copies or near pairs (a connected component)."""

    split: str
    images: int
    items: int
    max_distance: float
    """The largest verified distance between two members; above the threshold means chaining."""
    members: tuple[GroupMember, ...]


@dataclass(frozen=True)
class NearPair:
    """Two images of different audited splits within a recipe's threshold."""

    distance: float
    a: GroupMember
    b: GroupMember


@dataclass(frozen=True)
class NearLeaks:
    """Near pairs across splits under one recipe: the total and the closest ones."""

    recipe: str
    threshold: float
    pairs_total: int
    pairs: tuple[NearPair, ...]
    """The closest pairs first, at most the query's ``limit``."""
    capped_buckets: int | None = 0
    """As `NearTier.capped_buckets`: when not 0, ``pairs_total`` may be a lower bound."""


@dataclass(frozen=True)
class LeaksReport:
    """What leaks between the audited splits, image by image (the matrices count items)."""

    exact_images: int
    """Images that occur in more than one audited split."""
    exact: tuple[GroupMember, ...]
    """The most widespread of them first, with their items, at most ``limit``."""
    near: tuple[NearLeaks, ...]


@dataclass(frozen=True)
class LowInfoReport:
    """Low-information (blank, near-constant) images among the audited splits."""

    images: int
    items: int
    shown: tuple[GroupMember, ...]
    """The images with the most items first, at most the query's ``limit``."""


@dataclass(frozen=True)
class DupsReport:
    recipe: str | None
    threshold: float | None
    groups_total: int
    groups: tuple[DuplicateGroup, ...]
    """The largest groups first, at most the query's ``limit``."""


def to_json(value: Any, schema: str | None = None) -> Any:
    """A report as plain JSON data: dataclasses become objects, tuples lists, datetimes ISO text.

    Args:
        value: a report dataclass (or anything nested in one).
        schema: when given, stored under the ``schema`` key of the top-level object.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data: dict[str, Any] = {} if schema is None else {"schema": schema}
        for field in dataclasses.fields(value):
            if not field.metadata.get("json", True):
                continue  # e.g. embedded pictures: for the HTML, not for the JSON
            data[field.name] = to_json(getattr(value, field.name))
        if isinstance(value, SplitInfo):
            data["ref"] = value.ref
        return data
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def from_json(kind: type[T], data: Any) -> T:
    """The report `to_json` made, from its JSON data: the inverse for every report dataclass.

    Keys that are not fields (``schema``, a split's ``ref``) are ignored; fields `to_json`
    leaves out take their defaults.
    """
    return typing.cast(T, _decode(kind, data))


@functools.cache
def _field_types(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _decode(hint: Any, data: Any) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = _field_types(hint)
        return hint(
            **{
                field.name: _decode(hints[field.name], data[field.name])
                for field in dataclasses.fields(hint)
                if field.name in data
            }
        )
    origin = typing.get_origin(hint)
    if origin is tuple:
        member = typing.get_args(hint)[0]
        return tuple(_decode(member, value) for value in data)
    if origin in (types.UnionType, typing.Union):
        if data is None:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _decode(inner, data)
    if hint is datetime:
        return datetime.fromisoformat(data)
    if hint is float:
        return float(data)
    return data


@dataclass(frozen=True)
class SplitChange:
    """How one split (matched by name) changed from version ``a`` to ``b``, by image."""

    split: str
    images_a: int
    images_b: int
    kept: int
    added: int
    removed: int
    replaced_by_near_copy: int | None
    """Removed images with a near copy among the added ones (under the diff's recipe); None
    when no near copy was looked for (``--exact``, or a catalog without recipes)."""


@dataclass(frozen=True)
class SplitMove:
    """Images that reached split ``to`` in ``b`` from split ``source`` of ``a``."""

    source: str
    to: str
    moved: int
    """Left ``source`` for ``to``."""
    copied: int
    """Entered ``to`` while staying in ``source``: a leak the new version introduced."""


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    recipe: str | None
    threshold: float | None
    splits: tuple[SplitChange, ...]
    moves: tuple[SplitMove, ...]
    relabelled_items: int
    """Labelled items of ``b`` whose image carried labels in ``a``, never theirs."""
    relabelled: tuple[ItemRef, ...]
    """The first of them (``limit``), with provenance and their label in ``b``."""
    images_added: int
    images_removed: int
    labels_before: tuple[tuple[str, ...], ...] = ()
    """For each of ``relabelled``: the labels its image carries in ``a``, sorted (an
    unlabelled item's as "")."""
    capped_buckets: int | None = 0
    """As `NearTier.capped_buckets`, under ``recipe``: when not 0, ``replaced_by_near_copy``
    may be a lower bound."""


@dataclass(frozen=True)
class Neighbour:
    """A near copy of the shown image under one recipe."""

    recipe: str
    distance: float
    digest: str
    items: tuple[ItemRef, ...]


@dataclass(frozen=True)
class ShowReport:
    """One image: its description, every item that holds it, its near copies, a preview."""

    digest: str
    height: int
    width: int
    channels: int
    dtype: str
    low_info: bool
    items: tuple[ItemRef, ...]
    neighbours: tuple[Neighbour, ...]
    """The closest near copies under each recipe, at most the query's ``limit`` per recipe."""
    preview: Preview | None
    preview_note: str
    neighbours_total: int = 0
    """Near copies stored under all recipes (one counted once per recipe that pairs it)."""
