"""Stored reports: each version's overlap report, computed at ingest.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Versions ingested before this revision have none; their reports are computed when asked for.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stored_report",
        sa.Column("version_id", BigId, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_stored_report_version_id_version")
        ),
        sa.PrimaryKeyConstraint("version_id", "kind", name=op.f("pk_stored_report")),
    )


def downgrade() -> None:
    op.drop_table("stored_report")
