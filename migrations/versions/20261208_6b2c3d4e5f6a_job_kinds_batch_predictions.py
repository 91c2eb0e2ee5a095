"""job kinds: batch predictions (a predict job's model, progress in rows and output) and
imports (an import job's source and options; its dataset, `dataset_id`, made when it succeeds)

Every existing job is a training job (`kind` 'train'). On PostgreSQL the jobs' notification
trigger also fires when `rows_done` moves, so a predict job's live stream sends its progress.

Revision ID: 6b2c3d4e5f6a
Revises: 8d4e5f6a7b8c
Create Date: 2026-12-08 02:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "6b2c3d4e5f6a"
down_revision: str | Sequence[str] | None = "8d4e5f6a7b8c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOBS_TRIGGER = (
    "CREATE TRIGGER trainyard_jobs_notify AFTER UPDATE OF {columns} ON jobs "
    "FOR EACH ROW WHEN ({changed}) "
    "EXECUTE FUNCTION trainyard_notify_job()"
)


def _jobs_trigger(columns: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS trainyard_jobs_notify ON jobs")
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
    op.execute(JOBS_TRIGGER.format(columns=", ".join(columns), changed=changed))


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="train", nullable=False)
        )
        batch_op.add_column(sa.Column("model_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("rows_total", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("rows_done", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("output_location", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("output_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=2048), nullable=True))
        batch_op.add_column(sa.Column("import_options", sa.JSON(), nullable=True))
        batch_op.alter_column("dataset_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.create_index(batch_op.f("ix_jobs_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_model_id"), ["model_id"], unique=False)
    _jobs_trigger(["status", "attempts", "rows_done"])


def downgrade() -> None:
    """Downgrade schema (predict and import jobs become rows no code reads: delete them
    first; an import job without a dataset keeps the column from being made NOT NULL)."""
    _jobs_trigger(["status", "attempts"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_model_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_kind"))
        batch_op.alter_column("dataset_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("import_options")
        batch_op.drop_column("source")
        batch_op.drop_column("output_bytes")
        batch_op.drop_column("output_location")
        batch_op.drop_column("rows_done")
        batch_op.drop_column("rows_total")
        batch_op.drop_column("model_id")
        batch_op.drop_column("kind")
