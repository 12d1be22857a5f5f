"""Initial catalog: datasets, versions, splits, sources, images, items, and read-only views.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _hex(column: str) -> str:
    """SQL for the lowercase hex of a binary column, in this connection's dialect."""
    if op.get_context().dialect.name == "postgresql":
        return f"encode({column}, 'hex')"
    return f"lower(hex({column}))"


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
        sa.UniqueConstraint("name", name=op.f("uq_dataset_name")),
    )
    op.create_table(
        "version",
        sa.Column("id", BigId, nullable=False),
        sa.Column("dataset_id", BigId, nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parent_id", BigId, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("tool_version", sa.String(40), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["dataset.id"], name=op.f("fk_version_dataset_id_dataset")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["version.id"], name=op.f("fk_version_parent_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version")),
        sa.UniqueConstraint("dataset_id", "tag", name=op.f("uq_version_dataset_id_tag")),
    )
    op.create_table(
        "split",
        sa.Column("id", BigId, nullable=False),
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_split_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_split")),
        sa.UniqueConstraint("version_id", "name", name=op.f("uq_split_version_id_name")),
    )
    op.create_table(
        "source",
        sa.Column("id", BigId, nullable=False),
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(20), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_source_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source")),
    )
    op.create_index(op.f("ix_source_version_id"), "source", ["version_id"])
    op.create_table(
        "image",
        sa.Column("id", BigId, nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("low_info", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image")),
        sa.UniqueConstraint("digest", name=op.f("uq_image_digest")),
    )
    op.create_table(
        "item",
        sa.Column("split_id", BigId, nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("source_id", BigId, nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("source_row", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("position >= 0", name=op.f("ck_item_position_nonnegative")),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], name=op.f("fk_item_image_id_image")),
        sa.ForeignKeyConstraint(
            ["source_id"], ["source.id"], name=op.f("fk_item_source_id_source")
        ),
        sa.ForeignKeyConstraint(["split_id"], ["split.id"], name=op.f("fk_item_split_id_split")),
        sa.PrimaryKeyConstraint("split_id", "position", name=op.f("pk_item")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_item_image_id_split_id"), "item", ["image_id", "split_id"])

    # Views for people writing SQL (`dsaudit sql`); documented in the README.
    op.execute(
        f"""
        CREATE VIEW v_item AS
        SELECT d.name AS dataset, v.tag AS version, s.name AS split, i.position AS position,
               i.label AS label, {_hex("im.digest")} AS digest, im.height AS height,
               im.width AS width, im.channels AS channels, im.dtype AS dtype,
               im.low_info AS low_info, src.path AS source_path, i.source_key AS source_key,
               i.source_row AS source_row, i.image_id AS image_id, i.split_id AS split_id
        FROM item i
        JOIN split s ON s.id = i.split_id
        JOIN version v ON v.id = s.version_id
        JOIN dataset d ON d.id = v.dataset_id
        JOIN image im ON im.id = i.image_id
        JOIN source src ON src.id = i.source_id
        """
    )
    op.execute(
        """
        CREATE VIEW v_split AS
        SELECT d.name AS dataset, v.tag AS version, s.name AS split,
               COUNT(i.position) AS items, COUNT(DISTINCT i.image_id) AS images, s.id AS split_id
        FROM split s
        JOIN version v ON v.id = s.version_id
        JOIN dataset d ON d.id = v.dataset_id
        LEFT JOIN item i ON i.split_id = s.id
        GROUP BY d.name, v.tag, s.name, s.id
        """
    )
    op.execute(
        """
        CREATE VIEW v_exact_overlap AS
        SELECT a.dataset AS dataset_a, a.version AS version_a, a.split AS split_a,
               a.position AS position_a, a.label AS label_a,
               b.dataset AS dataset_b, b.version AS version_b, b.split AS split_b,
               b.position AS position_b, b.label AS label_b, a.digest AS digest
        FROM v_item a
        JOIN v_item b ON b.image_id = a.image_id AND b.split_id <> a.split_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW v_exact_overlap")
    op.execute("DROP VIEW v_split")
    op.execute("DROP VIEW v_item")
    op.drop_index(op.f("ix_item_image_id_split_id"), table_name="item")
    op.drop_table("item")
    op.drop_table("image")
    op.drop_index(op.f("ix_source_version_id"), table_name="source")
    op.drop_table("source")
    op.drop_table("split")
    op.drop_table("version")
    op.drop_table("dataset")
