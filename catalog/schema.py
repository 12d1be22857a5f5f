"""The catalog's tables, as SQLAlchemy 2.0 typed models.

The models are the one description of the schema: Alembic revisions in ``migrations/`` are written
to match them, and a test checks that ``alembic upgrade head`` produces exactly this metadata.
Bulk data (images, items) is written through Core ``insert()`` on ``Model.__table__``; the ORM
classes are for reading metadata and for typing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only makes INTEGER (not BIGINT) primary keys aliases of the rowid, i.e. auto-assigned.
BigId = BigInteger().with_variant(Integer(), "sqlite")

IdPK = Annotated[int, mapped_column(BigId, primary_key=True)]
Name = Annotated[str, mapped_column(String(200))]

DIGEST_BYTES = 32
"""Length of an image digest (blake2b-256), see `catalog.digest`."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def core_table(model: type[Base]) -> Table:
    """A model's Core `Table`, for bulk statements (``__table__`` is typed as a FromClause)."""
    return cast(Table, model.__table__)


class Dataset(Base):
    """A named collection of versions (``notmnist``)."""

    __tablename__ = "dataset"

    id: Mapped[IdPK]
    name: Mapped[Name] = mapped_column(unique=True)


class Version(Base):
    """One immutable ingest of a dataset (``v1``); visible only once its transaction commits."""

    __tablename__ = "version"
    __table_args__ = (UniqueConstraint("dataset_id", "tag"),)

    id: Mapped[IdPK]
    dataset_id: Mapped[int] = mapped_column(BigId, ForeignKey("dataset.id"))
    tag: Mapped[Name]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("version.id"))
    note: Mapped[str | None] = mapped_column(Text)
    tool_version: Mapped[str] = mapped_column(String(40))


class Split(Base):
    """A named part of a version (``train``, ``test``...)."""

    __tablename__ = "split"
    __table_args__ = (UniqueConstraint("version_id", "name"),)

    id: Mapped[IdPK]
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("version.id"))
    name: Mapped[Name]


class Source(Base):
    """A file read by an ingest, for provenance: where an item came from, and was it changed.

    An image folder is one source (format ``folder``): its ``sha256`` is the digest of its
    manifest (every ingested file's relative path and sha256, sorted) and ``size`` the bytes of
    those files; each item keeps its own file's path (``source_key``) and sha256.
    """

    __tablename__ = "source"

    id: Mapped[IdPK]
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("version.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))


class Image(Base):
    """One distinct picture, content-addressed by its canonical digest.

    Low-information images (blank or near-constant, `catalog.pixels.low_information`) are
    listed by a partial index, ``ix_image_low_info`` (their ids only, a few per thousand in
    practice). An ingest then counts a split's low-information items with one query after its
    last chunk, and on SQLite its digest lookups read only the digest index (which holds the
    id, the rowid), not the table row behind each digest: 1M lookups of a 1M-image catalog
    took 4.6 s against 7.0 s (`benchmarks/RESULTS.md`, section 4). Queries select them with
    ``low_info IS 1`` (SQLAlchemy's ``low_info.is_(True)``): SQLite uses a partial index only
    for a query whose WHERE repeats the index's condition.
    """

    __tablename__ = "image"

    id: Mapped[IdPK]
    digest: Mapped[bytes] = mapped_column(LargeBinary(DIGEST_BYTES), unique=True)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    low_info: Mapped[bool] = mapped_column(Boolean)


Index(
    "ix_image_low_info",
    Image.id,
    sqlite_where=Image.low_info.is_(True),
    postgresql_where=Image.low_info.is_(True),
)


class Item(Base):
    """One position of a split: which image sits there, its label, and where it was read from."""

    __tablename__ = "item"
    __table_args__ = (
        Index(None, "image_id", "split_id"),
        CheckConstraint("position >= 0", name="position_nonnegative"),
        {"sqlite_with_rowid": False},
    )

    split_id: Mapped[int] = mapped_column(BigId, ForeignKey("split.id"), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    image_id: Mapped[int] = mapped_column(BigId, ForeignKey("image.id"))
    label: Mapped[str | None] = mapped_column(String(200))
    source_id: Mapped[int] = mapped_column(BigId, ForeignKey("source.id"))
    source_key: Mapped[str] = mapped_column(Text)
    source_row: Mapped[int | None] = mapped_column(BigInteger)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    """sha256 (hex) of the item's own file, for items read from an image folder; else NULL
    (an array's rows share their file's digest, kept on `Source`)."""


class SkippedFile(Base):
    """A file an ingest could not decode and left out (``--skip-bad``), with the reason."""

    __tablename__ = "skipped_file"

    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("version.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class StoredReport(Base):
    """A report computed at ingest, in its JSON form (`catalog.model.to_json`), so the common
    query answers without reading a million items again (`catalog.queries.overlap`).

    Valid for as long as its ``format`` is current: what it summarises never changes once the
    version is committed (items are immutable, a catalog keeps its recipes, and every pair
    between two of its images is stored by the ingest that brought in the later one)."""

    __tablename__ = "stored_report"

    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("version.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    format: Mapped[int] = mapped_column(Integer)
    """Bumped whenever what the report holds or how it is computed changes; a stored report of
    another format is ignored (and the report computed as it is asked for)."""
    body: Mapped[str] = mapped_column(Text)


class NearIngest(Base):
    """What one ingest's near-duplicate stage did under one recipe (`catalog.near.NearStats`).

    Kept for ``capped_buckets``: where the blow-up guard (`catalog.near.BUCKET_CAP`) limited a
    bucket's candidates, the pairs it stored are a lower bound, and so are the near counts of
    every report over an image this ingest brought in: a pair is stored by the ingest that
    brought in the later of its two images. ``first_image`` and ``last_image`` bound the ids
    of those images (`catalog.queries.capped_buckets`). Versions ingested before schema
    revision 0008, and exact-only ingests, have no rows.
    """

    __tablename__ = "near_ingest"

    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("version.id"), primary_key=True)
    recipe_id: Mapped[int] = mapped_column(BigId, ForeignKey("recipe.id"), primary_key=True)
    images: Mapped[int] = mapped_column(BigInteger)
    """New images signed."""
    candidates: Mapped[int] = mapped_column(BigInteger)
    """Pairs the band join proposed (counted in each band that proposes them)."""
    pairs: Mapped[int] = mapped_column(BigInteger)
    """Pairs stored (distance <= the recipe's radius)."""
    largest_bucket: Mapped[int] = mapped_column(BigInteger)
    capped_buckets: Mapped[int] = mapped_column(BigInteger)
    """Buckets over `catalog.near.BUCKET_CAP`, whose candidates the guard limited."""
    first_image: Mapped[int | None] = mapped_column(BigInteger)
    """The lowest id of the images this ingest brought in (None: it brought in none)."""
    last_image: Mapped[int | None] = mapped_column(BigInteger)
    """The highest such id. Ids grow with each insert, so the images an ingest brought in lie
    in its range; on PostgreSQL, ingests side by side interleave theirs, and the ranges then
    hold some of each other's images as well (never fewer than their own)."""


class RecipeRecord(Base):
    """A near-duplicate recipe as stored: its parameters and the fingerprint that identifies them.

    Signatures, band keys and pairs of different recipes are never compared; a recipe whose
    parameters change gets a new name (``pixel-v2``), so stored values never change meaning.
    """

    __tablename__ = "recipe"

    id: Mapped[IdPK]
    name: Mapped[Name] = mapped_column(unique=True)
    family: Mapped[str] = mapped_column(String(20))
    params: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    radius: Mapped[float] = mapped_column(Float)
    default_threshold: Mapped[float] = mapped_column(Float)


class Signature(Base):
    """An image's compact signature under a recipe, for exact verification of candidates.

    Derived data like `BandKey`, and like it without foreign keys (schema revision 0007): rows
    are only ever written with their image and recipe, in one transaction, and checking both
    parents of each row cost more than writing it. ``dsaudit check`` finds orphans
    (`catalog.check.check_orphans`).
    """

    __tablename__ = "signature"
    __table_args__ = ({"sqlite_with_rowid": False},)

    recipe_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class BandKey(Base):
    """One LSH band key of one image: images sharing (recipe, band, key) are candidates.

    The primary key is the join's index: finding a bucket's members is one range scan per
    level. This is derived data (recomputable from the signatures) and by far the largest
    table, so it has no foreign keys: checking two parents per row made its inserts 1.7x slower
    (3.4M rows: 5.6 s against 3.3 s). Rows are only ever written with their image and recipe, in
    one transaction.

    ``level`` is ``floor(log2(n))`` of the n images whose keys one ingest stored under the
    recipe (`catalog.near.band_level`); it comes second in the primary key, so an ingest's keys
    go into the region of ingests of about its size. A 5 % version of a 1M-image catalog then
    writes its 2.4M rows in a region of their own rather than between the first version's
    48M, where each of its rows had dirtied another page of the whole table
    (`benchmarks/RESULTS.md`, section 4). Levels are never merged: versions of one size share
    one. Rows written before schema revision 0005 are level 0, with 1-image ingests' rows.
    """

    __tablename__ = "band_key"
    __table_args__ = ({"sqlite_with_rowid": False},)

    recipe_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default=text("0"))
    band: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    image_id: Mapped[int] = mapped_column(BigId, primary_key=True)


class Pair(Base):
    """Two images within a recipe's radius, with their verified distance (0-1).

    Without foreign keys since schema revision 0007, like `Signature`: checking the three
    parents of each row made inserting pairs 3-4x slower (2.85M sorted pairs into a catalog of
    1M images: 2.9-3.2 s a million with the checks, 0.7-1.0 s without), and the last recipe's
    pairs go in with nothing else left to run beside them.
    """

    __tablename__ = "pair"
    __table_args__ = (
        CheckConstraint("image_a < image_b", name="ordered"),
        Index(None, "recipe_id", "image_b"),
        {"sqlite_with_rowid": False},
    )

    recipe_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_a: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_b: Mapped[int] = mapped_column(BigId, primary_key=True)
    distance: Mapped[float] = mapped_column(Float)
