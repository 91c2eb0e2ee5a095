"""datasets' rows in the dataset store: location, bytes, checksum, warnings

The rows themselves are moved out of `dataset_data` into the store (`TRAINYARD_STORE_URL`) by
`service.migrate.upgrade` right after this revision, one dataset per transaction: it needs the
store, which Alembic does not know.

Revision ID: 4c1d2e3f5a6b
Revises: b7d41e2c9a10
Create Date: 2026-12-07 21:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "4c1d2e3f5a6b"
down_revision: str | Sequence[str] | None = "b7d41e2c9a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("location", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("n_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("checksum", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema (datasets already moved to the store keep their rows there)."""
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("warnings")
        batch_op.drop_column("checksum")
        batch_op.drop_column("n_bytes")
        batch_op.drop_column("location")
