"""Near duplicates: recipes, signatures, LSH band keys, verified pairs, and their views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recipe",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("family", sa.String(20), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("radius", sa.Float(), nullable=False),
        sa.Column("default_threshold", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipe")),
        sa.UniqueConstraint("name", name=op.f("uq_recipe_name")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_recipe_fingerprint")),
    )
    op.create_table(
        "signature",
        sa.Column("recipe_id", BigId, nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipe_id"], ["recipe.id"], name=op.f("fk_signature_recipe_id_recipe")
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_signature_image_id_image")
        ),
        sa.PrimaryKeyConstraint("recipe_id", "image_id", name=op.f("pk_signature")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "band_key",
        sa.Column("recipe_id", BigId, nullable=False),
        sa.Column("band", sa.SmallInteger(), nullable=False),
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        # No foreign keys: derived data, and the checks cost 1.7x on its inserts (schema.py).
        sa.PrimaryKeyConstraint("recipe_id", "band", "key", "image_id", name=op.f("pk_band_key")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "pair",
        sa.Column("recipe_id", BigId, nullable=False),
        sa.Column("image_a", BigId, nullable=False),
        sa.Column("image_b", BigId, nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.CheckConstraint("image_a < image_b", name=op.f("ck_pair_ordered")),
        sa.ForeignKeyConstraint(
            ["recipe_id"], ["recipe.id"], name=op.f("fk_pair_recipe_id_recipe")
        ),
        sa.ForeignKeyConstraint(["image_a"], ["image.id"], name=op.f("fk_pair_image_a_image")),
        sa.ForeignKeyConstraint(["image_b"], ["image.id"], name=op.f("fk_pair_image_b_image")),
        sa.PrimaryKeyConstraint("recipe_id", "image_a", "image_b", name=op.f("pk_pair")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_pair_recipe_id_image_b"), "pair", ["recipe_id", "image_b"])

    # Both directions of every stored pair, so one join finds an image's neighbours.
    op.execute(
        """
        CREATE VIEW v_near_pair AS
        SELECT r.name AS recipe, p.image_a AS image_id, p.image_b AS other_id,
               p.distance AS distance
        FROM pair p JOIN recipe r ON r.id = p.recipe_id
        UNION ALL
        SELECT r.name, p.image_b, p.image_a, p.distance
        FROM pair p JOIN recipe r ON r.id = p.recipe_id
        """
    )
    op.execute(
        """
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
    )


def downgrade() -> None:
    op.execute("DROP VIEW v_near_overlap")
    op.execute("DROP VIEW v_near_pair")
    op.drop_index(op.f("ix_pair_recipe_id_image_b"), table_name="pair")
    op.drop_table("pair")
    op.drop_table("band_key")
    op.drop_table("signature")
    op.drop_table("recipe")
