"""Signatures and pairs without foreign keys, like band keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

``signature`` and ``pair`` lose their foreign keys to ``image`` and ``recipe``. Both are derived
data that an ingest writes only with their images and recipe, in one transaction, and checking
the parents of every row was most of their insert cost (2.85M sorted pairs into a catalog of
1M images: 2.9-3.2 s a million with the checks, 0.7-1.0 s without). ``dsaudit check`` finds
orphans in them as it does in ``band_key`` (`catalog.check.check_orphans`).

SQLite cannot drop a constraint, so there each table is copied, in its primary key's order, into
one declared without them (a 1M-image catalog: 2M signatures of 1 GB and 5M pairs). The views
over ``pair`` are left as they are: the rename runs with ``legacy_alter_table`` on, so SQLite
neither rewrites nor re-parses them, and they name the new table as they named the old one.
PostgreSQL drops the constraints. A downgrade restores them, and so refuses a catalog holding
orphans (`dsaudit check` lists them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

FOREIGN_KEYS = {
    "signature": (("recipe_id", "recipe"), ("image_id", "image")),
    "pair": (("recipe_id", "recipe"), ("image_a", "image"), ("image_b", "image")),
}
"""Each table's foreign keys before this revision: (column, parent table, whose key is id)."""


def _name(table: str, column: str, parent: str) -> str:
    """A foreign key's name, as the naming convention gave it (`catalog.schema`)."""
    return op.f(f"fk_{table}_{column}_{parent}")


def _foreign_keys(table: str) -> list[sa.ForeignKeyConstraint]:
    return [
        sa.ForeignKeyConstraint([column], [f"{parent}.id"], name=_name(table, column, parent))
        for column, parent in FOREIGN_KEYS[table]
    ]


def _columns(table: str) -> tuple[list[sa.SchemaItem], list[str]]:
    """(the table's columns and constraints but its foreign keys, its primary key)."""
    if table == "signature":
        key = ["recipe_id", "image_id"]
        return [
            sa.Column("recipe_id", BigId, nullable=False),
            sa.Column("image_id", BigId, nullable=False),
            sa.Column("value", sa.LargeBinary(), nullable=False),
        ], key
    key = ["recipe_id", "image_a", "image_b"]
    return [
        sa.Column("recipe_id", BigId, nullable=False),
        sa.Column("image_a", BigId, nullable=False),
        sa.Column("image_b", BigId, nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.CheckConstraint("image_a < image_b", name=op.f("ck_pair_ordered")),
    ], key


def _rebuild(table: str, constraints: Sequence[sa.ForeignKeyConstraint]) -> None:
    """SQLite: copy ``table`` into a new one with just these foreign keys."""
    columns, key = _columns(table)
    names = [c.name for c in columns if isinstance(c, sa.Column)]
    op.create_table(
        f"{table}_0007",
        *columns,
        *constraints,
        sa.PrimaryKeyConstraint(*key, name=op.f(f"pk_{table}")),
        sqlite_with_rowid=False,
    )
    # In the primary key's order: the copy appends to the new B-tree. Rows are copied as they
    # are, also a damaged pair out of order, which `dsaudit check` then reports (refused by
    # the CHECK here, it would keep the catalog from opening at all, check included).
    listed = ", ".join(names)
    with _pragma("ignore_check_constraints"):
        op.execute(
            f"INSERT INTO {table}_0007 ({listed}) SELECT {listed} FROM {table} "
            f"ORDER BY {', '.join(key)}"
        )
    op.drop_table(table)  # and its index
    # Without it, SQLite >= 3.26 re-parses every view on a rename, and those over pair name a
    # table that is, for that moment, missing.
    with _pragma("legacy_alter_table"):
        op.rename_table(f"{table}_0007", table)
    if table == "pair":
        op.create_index(op.f("ix_pair_recipe_id_image_b"), "pair", ["recipe_id", "image_b"])


@contextmanager
def _pragma(name: str) -> Iterator[None]:
    """SQLite: the boolean pragma ``name`` on for a while. A connection's pragmas outlive a
    rolled-back transaction, so it is turned off again either way."""
    op.execute(f"PRAGMA {name} = ON")
    try:
        yield
    finally:
        op.execute(f"PRAGMA {name} = OFF")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in FOREIGN_KEYS:
        if sqlite:
            _rebuild(table, [])
            continue
        for column, parent in FOREIGN_KEYS[table]:
            op.drop_constraint(_name(table, column, parent), table, type_="foreignkey")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in FOREIGN_KEYS:
        if sqlite:
            _rebuild(table, _foreign_keys(table))
            continue
        for column, parent in FOREIGN_KEYS[table]:
            op.create_foreign_key(_name(table, column, parent), table, parent, [column], ["id"])
