"""analysis shards: the blob holding a kNN shard's result (a split kNN's plan or part)

Revision ID: 0005_knn_shard_blobs
Revises: 0004_subspace_trials
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_knn_shard_blobs"
down_revision: str | None = "0004_subspace_trials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analysis_shards") as batch:
        batch.add_column(sa.Column("blob_sha256", sa.String(length=64), nullable=True))
    op.create_index("ix_analysis_shards_blob_sha256", "analysis_shards", ["blob_sha256"])


def downgrade() -> None:
    op.drop_index("ix_analysis_shards_blob_sha256", table_name="analysis_shards")
    with op.batch_alter_table("analysis_shards") as batch:
        batch.drop_column("blob_sha256")
