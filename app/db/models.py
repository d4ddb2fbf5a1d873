"""SQLAlchemy 2 models: users, plugins, per-user plugin configs and runs.

The run status set and the trigger set are defined once here (:class:`RunStatus`,
:class:`Trigger`) and enforced by CHECK constraints, so a typo can never reach
a row. JSON columns are JSONB on PostgreSQL and JSON elsewhere (SQLite).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RunStatus(StrEnum):
    """Where a run is in its life. Terminal states never change again."""

    PENDING = "pending"  # row exists, no stream entry published yet (or a retry is waiting)
    QUEUED = "queued"  # a stream entry names it
    PROCESSING = "processing"  # a worker claimed it and holds a lease
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled: the one definition (runs and API read it here)."""
        return self in TERMINAL_STATUSES


#: The terminal statuses, for queries (``status IN (...)``); :attr:`RunStatus.is_terminal` reads it.
TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class Trigger(StrEnum):
    """Why a run exists."""

    SCHEDULE = "schedule"
    MANUAL = "manual"


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


# Stable constraint names, so migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back in UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")


class PluginRow(TimestampMixin, Base):
    """The database's copy of a plugin's manifest, kept current by sync."""

    __tablename__ = "plugins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    version: Mapped[str] = mapped_column(String(100))
    schema_version: Mapped[str] = mapped_column(String(16), default="v1")
    capabilities: Mapped[list[str]] = mapped_column(JSONType, default=list)
    default_config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    settings_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Hash of settings_schema; configs record the one they were validated against.
    schema_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The manifest's cap on runs in flight (the consumer enforces it; None: no cap).
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The Celery queue the consumer sends the plugin's runs to.
    queue: Mapped[str] = mapped_column(String(63), default="runs", server_default="runs")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    #: Why the plugin is disabled (e.g. its folder disappeared).
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class UserPluginConfig(TimestampMixin, Base):
    __tablename__ = "user_plugin_configs"
    __table_args__ = (
        UniqueConstraint("user_id", "plugin_id"),
        # The beat's query: enabled configs by due time. Disabled rows stay out of the index.
        Index(
            "ix_user_plugin_configs_due",
            "next_run_at",
            postgresql_where=text("enabled"),
            sqlite_where=text("enabled"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    plugin_id: Mapped[int] = mapped_column(ForeignKey("plugins.id", ondelete="RESTRICT"), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: The plugin version and schema fingerprint the settings were validated against.
    plugin_version: Mapped[str] = mapped_column(String(100), default="")
    schema_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PluginRun(TimestampMixin, Base):
    """One execution of one plugin for one user: the outbox row and the record."""

    __tablename__ = "plugin_runs"
    __table_args__ = (
        # One run per schedule slot; manual runs have a NULL slot and never collide.
        UniqueConstraint("config_id", "scheduled_for"),
        CheckConstraint(_in("status", RunStatus), name="status"),
        CheckConstraint(_in("trigger", Trigger), name="trigger"),
        Index("ix_plugin_runs_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_plugin_runs_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    plugin_id: Mapped[int] = mapped_column(ForeignKey("plugins.id", ondelete="RESTRICT"), index=True)
    config_id: Mapped[int | None] = mapped_column(
        ForeignKey("user_plugin_configs.id", ondelete="SET NULL"), nullable=True
    )
    trigger: Mapped[str] = mapped_column(String(16), default=Trigger.MANUAL)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Manual triggers: the caller's idempotency key, unique per user.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # No index of its own: ix_plugin_runs_status_next_attempt_at leads with status and serves
    # every status filter; one index fewer for every insert and status change to maintain.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PENDING)
    #: The effective settings the run executes with (validated again by the worker).
    input: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: ``attempts`` when the run was last replayed: its retry budget counts ``attempts - attempts_base``
    #: (``attempts`` is the claim fence and only ever grows, so a replay cannot reset it).
    attempts_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: One record per dead-letter replay: when, the status and error it replaced, the attempts so far.
    replays: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Id of the stream entry that last named this run.
    stream_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: One entry per ended attempt, failed ones included (see app.execution.attempts): outcome,
    #: times, error and token usage. Appended by the UPDATE that records the attempt's outcome.
    attempt_log: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    #: Tokens of every attempt so far, summed (``status`` adds these up per plugin).
    total_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


Index(
    "uq_plugin_runs_user_id_idempotency_key",
    PluginRun.user_id,
    PluginRun.idempotency_key,
    unique=True,
    postgresql_where=PluginRun.idempotency_key.isnot(None),
    sqlite_where=PluginRun.idempotency_key.isnot(None),
)
