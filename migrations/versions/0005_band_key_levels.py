"""Band keys by level: each ingest's keys go to the region of ingests of about its size.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

``band_key`` gains ``level`` (``floor(log2(n))`` of the n images one ingest stored keys for
under the recipe, `catalog.near.band_level`), second in its primary key. Before, a small
version's keys went between the keys already stored, each row into another page of the whole
table. Existing rows become level 0. SQLite cannot change a primary key in place, so there the
table is copied in key order (48M rows, a 1M-image catalog: about 35 s; the old table's pages
stay in the file for reuse until a `VACUUM`); PostgreSQL adds the column (last in its column
order) and builds the new key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OLD_KEY = ["recipe_id", "band", "key", "image_id"]
NEW_KEY = ["recipe_id", "level", "band", "key", "image_id"]


def _rebuild(columns: list[str]) -> None:
    """SQLite: copy ``band_key`` into a new table whose primary key is ``columns``."""
    with_level = "level" in columns
    extra = (
        [sa.Column("level", sa.SmallInteger(), nullable=False, server_default=sa.text("0"))]
        if with_level
        else []
    )
    op.create_table(
        "band_key_0005",
        sa.Column("recipe_id", BigId, nullable=False),
        *extra,
        sa.Column("band", sa.SmallInteger(), nullable=False),
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        # No foreign keys: derived data, and the checks cost 1.7x on its inserts (schema.py).
        sa.PrimaryKeyConstraint(*columns, name=op.f("pk_band_key")),
        sqlite_with_rowid=False,
    )
    # Ordered by the old key. On upgrade that is the new key's order too (every row at level
    # 0), so the copy appends to the new B-tree rather than splitting its pages; on downgrade
    # SQLite sorts the rows first.
    chosen = "recipe_id, 0, band, key, image_id" if with_level else ", ".join(OLD_KEY)
    op.execute(
        f"INSERT INTO band_key_0005 ({', '.join(columns)}) SELECT {chosen} FROM band_key "
        f"ORDER BY {', '.join(OLD_KEY)}"
    )
    op.drop_table("band_key")
    op.rename_table("band_key_0005", "band_key")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(NEW_KEY)
        return
    op.add_column(
        "band_key",
        sa.Column("level", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.drop_constraint("pk_band_key", "band_key", type_="primary")
    op.create_primary_key("pk_band_key", "band_key", NEW_KEY)


def downgrade() -> None:
    # Each image has one key per (recipe, band), stored once: without the level, the rows
    # stay distinct.
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(OLD_KEY)
        return
    op.drop_constraint("pk_band_key", "band_key", type_="primary")
    op.create_primary_key("pk_band_key", "band_key", OLD_KEY)
    op.drop_column("band_key", "level")
