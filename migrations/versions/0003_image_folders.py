"""Image folders: each item's own file digest, files skipped as undecodable, v_item shows both.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _hex(column: str) -> str:
    """SQL for the lowercase hex of a binary column, in this connection's dialect."""
    if op.get_context().dialect.name == "postgresql":
        return f"encode({column}, 'hex')"
    return f"lower(hex({column}))"


def _v_item(extra: str) -> str:
    return f"""
        CREATE VIEW v_item AS
        SELECT d.name AS dataset, v.tag AS version, s.name AS split, i.position AS position,
               i.label AS label, {_hex("im.digest")} AS digest, im.height AS height,
               im.width AS width, im.channels AS channels, im.dtype AS dtype,
               im.low_info AS low_info, src.path AS source_path, i.source_key AS source_key,
               i.source_row AS source_row, i.image_id AS image_id, i.split_id AS split_id{extra}
        FROM item i
        JOIN split s ON s.id = i.split_id
        JOIN version v ON v.id = s.version_id
        JOIN dataset d ON d.id = v.dataset_id
        JOIN image im ON im.id = i.image_id
        JOIN source src ON src.id = i.source_id
        """


# The views that read v_item are dropped and made again around it (PostgreSQL refuses to drop
# a view others depend on); their text is that of revisions 0001 and 0002.
_V_EXACT_OVERLAP = """
    CREATE VIEW v_exact_overlap AS
    SELECT a.dataset AS dataset_a, a.version AS version_a, a.split AS split_a,
           a.position AS position_a, a.label AS label_a,
           b.dataset AS dataset_b, b.version AS version_b, b.split AS split_b,
           b.position AS position_b, b.label AS label_b, a.digest AS digest
    FROM v_item a
    JOIN v_item b ON b.image_id = a.image_id AND b.split_id <> a.split_id
    """
_V_NEAR_OVERLAP = """
    CREATE VIEW v_near_overlap AS
    SELECT n.recipe AS recipe, n.distance AS distance,
           a.dataset AS dataset_a, a.version AS version_a, a.split AS split_a,
           a.position AS position_a, a.label AS label_a, a.digest AS digest_a,
           b.dataset AS dataset_b, b.version AS version_b, b.split AS split_b,
           b.position AS position_b, b.label AS label_b, b.digest AS digest_b
    FROM v_near_pair n
    JOIN v_item a ON a.image_id = n.image_id
    JOIN v_item b ON b.image_id = n.other_id AND b.split_id <> a.split_id
    """


def _remake_views(extra: str) -> None:
    op.execute("DROP VIEW v_near_overlap")
    op.execute("DROP VIEW v_exact_overlap")
    op.execute("DROP VIEW v_item")
    op.execute(_v_item(extra))
    op.execute(_V_EXACT_OVERLAP)
    op.execute(_V_NEAR_OVERLAP)


def upgrade() -> None:
    op.add_column("item", sa.Column("source_sha256", sa.String(64), nullable=True))
    op.create_table(
        "skipped_file",
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_skipped_file_version_id_version")
        ),
        sa.PrimaryKeyConstraint("version_id", "path", name=op.f("pk_skipped_file")),
    )
    _remake_views(", i.source_sha256 AS source_sha256")


def downgrade() -> None:
    _remake_views("")
    op.drop_table("skipped_file")
    # A plain DROP COLUMN (SQLite >= 3.35): a batch copy of item would break v_split.
    op.drop_column("item", "source_sha256")
