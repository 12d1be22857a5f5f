"""What each ingest's near-duplicate stage did, per recipe: for the blow-up guard's warning.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``near_ingest`` keeps, per version and recipe, the images signed, the band join's candidates,
the pairs stored, the largest bucket, how many buckets went over the blow-up guard's cap
(`catalog.near.BUCKET_CAP`) and the range of ids of the images the ingest brought in. Reports
use them to say when their near counts may be lower bounds. Versions ingested before this
revision have no rows: what their ingests capped was printed then and not kept.

A downgrade drops the table and the stored overlap reports, which hold counts from it that an
upgrade could not bring back; the older release computes those reports when asked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "near_ingest",
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("recipe_id", BigId, nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("candidates", sa.BigInteger(), nullable=False),
        sa.Column("pairs", sa.BigInteger(), nullable=False),
        sa.Column("largest_bucket", sa.BigInteger(), nullable=False),
        sa.Column("capped_buckets", sa.BigInteger(), nullable=False),
        sa.Column("first_image", sa.BigInteger(), nullable=True),
        sa.Column("last_image", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_near_ingest_version_id_version")
        ),
        sa.ForeignKeyConstraint(
            ["recipe_id"], ["recipe.id"], name=op.f("fk_near_ingest_recipe_id_recipe")
        ),
        sa.PrimaryKeyConstraint("version_id", "recipe_id", name=op.f("pk_near_ingest")),
    )


def downgrade() -> None:
    op.execute("DELETE FROM stored_report WHERE kind = 'overlap'")
    op.drop_table("near_ingest")
