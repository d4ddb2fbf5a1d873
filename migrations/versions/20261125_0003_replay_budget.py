"""replay budget and history: plugin_runs.attempts_base, plugin_runs.replays

A replayed run gets its own retry budget (attempts - attempts_base), and every
replay keeps the status and error it replaced.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("plugin_runs", sa.Column("attempts_base", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "plugin_runs",
        sa.Column(
            "replays",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("plugin_runs", "replays")
    op.drop_column("plugin_runs", "attempts_base")
