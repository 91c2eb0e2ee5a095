"""deletes, retention, quotas: tombstones (`deleted_at`), `expires_at`, per-key quotas

Revision ID: 9e5f6a7b8c9d
Revises: 6b2c3d4e5f6a
Create Date: 2026-12-08 03:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9e5f6a7b8c9d"
down_revision: str | Sequence[str] | None = "6b2c3d4e5f6a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOMBSTONED = ("datasets", "jobs", "models", "sweeps")
_EXPIRING = ("datasets", "jobs", "models")


def upgrade() -> None:
    """Upgrade schema."""
    for table in _TOMBSTONED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
            batch.create_index(f"ix_{table}_deleted_at", ["deleted_at"])
    for table in _EXPIRING:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
            batch.create_index(f"ix_{table}_expires_at", ["expires_at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("quota_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("max_active_jobs", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_active_jobs")
        batch.drop_column("quota_bytes")
    for table in _EXPIRING:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_expires_at")
            batch.drop_column("expires_at")
    for table in _TOMBSTONED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_deleted_at")
            batch.drop_column("deleted_at")
