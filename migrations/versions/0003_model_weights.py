"""model weights: a model spec may hold uploaded weights (safetensors, or a Hugging Face-style zip) as a blob

Revision ID: 0003_model_weights
Revises: 0002_s3_worker_heartbeats
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_model_weights"
down_revision: str | None = "0002_s3_worker_heartbeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model_specs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("weights_format", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("weights_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("weights_meta", JSONDoc, nullable=True))
        batch_op.create_index(batch_op.f("ix_model_specs_weights_sha256"), ["weights_sha256"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_model_specs_weights_sha256_blobs"), "blobs", ["weights_sha256"], ["sha256"]
        )


def downgrade() -> None:
    with op.batch_alter_table("model_specs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_model_specs_weights_sha256_blobs"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_model_specs_weights_sha256"))
        batch_op.drop_column("weights_meta")
        batch_op.drop_column("weights_size_bytes")
        batch_op.drop_column("weights_format")
        batch_op.drop_column("weights_sha256")
