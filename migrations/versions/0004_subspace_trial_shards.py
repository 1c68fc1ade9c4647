"""analysis shards carry a subspace sweep's trials: their record (result), queue and progress weight

Revision ID: 0004_subspace_trials
Revises: 0003_model_weights
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_subspace_trials"
down_revision: str | None = "0003_model_weights"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("analysis_shards") as batch:
        batch.add_column(sa.Column("queue", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("weight", sa.Float(), server_default="1", nullable=False))
        batch.add_column(sa.Column("result", JSONDoc, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analysis_shards") as batch:
        batch.drop_column("result")
        batch.drop_column("weight")
        batch.drop_column("queue")
