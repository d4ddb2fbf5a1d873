"""plugins: max_concurrency and queue (flow control, per-plugin queues)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("plugins", sa.Column("max_concurrency", sa.Integer(), nullable=True))
    op.add_column("plugins", sa.Column("queue", sa.String(length=63), server_default="runs", nullable=False))


def downgrade() -> None:
    op.drop_column("plugins", "queue")
    op.drop_column("plugins", "max_concurrency")
