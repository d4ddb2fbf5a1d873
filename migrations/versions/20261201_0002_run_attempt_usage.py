"""per-attempt outcome and token usage on runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both columns are nullable or have a server default: adding them rewrites no rows.
    with op.batch_alter_table("plugin_runs") as batch:
        batch.add_column(
            sa.Column(
                "attempt_log",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("total_tokens", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("plugin_runs") as batch:
        batch.drop_column("total_tokens")
        batch.drop_column("attempt_log")
