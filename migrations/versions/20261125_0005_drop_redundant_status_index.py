"""plugin_runs: drop ix_plugin_runs_status (ix_plugin_runs_status_next_attempt_at leads with status)

Every insert and every status change paid for both indexes; every query filtering on status is
served by the composite one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 17:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_plugin_runs_status"), table_name="plugin_runs")


def downgrade() -> None:
    op.create_index(op.f("ix_plugin_runs_status"), "plugin_runs", ["status"], unique=False)
