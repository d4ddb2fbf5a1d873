"""The operator's view of the pipeline, per plugin (``first-sip status``).

Reads only: stream length, pending entries, the oldest pending entry's idle
time, consumer-group lag, dead letters, runs by status and the tokens they
spent (every attempt) in the last 24 hours, and the schedule lag (now minus
the oldest due ``next_run_at``). A missing stream or group reads as zero;
Redis being down raises (the CLI says so in one line); one plugin's broken
stream is reported on that plugin only.

Flow control: per plugin its queue, runs in flight / cap (capped plugins) and
entries waiting in the stream (not yet sent to Celery: unread, plus pending
entries a consumer holds back); the model's budget use and pause, the same in
every row (every plugin's runs use the one configured model). The model and
its budget are the ones the cluster's workers and consumers published
(:func:`app.flow.budget.published`, the most recent), not this process's
environment, which may not even set them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select

from app import keys
from app.config import get_settings
from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, UserPluginConfig, utcnow
from app.flow import slots
from app.flow.budget import published
from app.flow.policy import model_budget, plugin_cap
from app.redis_client import get_redis


@dataclass
class PluginStatus:
    plugin: str
    enabled: bool
    stream_length: int = 0
    pending: int = 0
    oldest_pending_idle_seconds: float | None = None
    group_lag: int | None = None
    dead_letters: int = 0
    runs_24h: dict[str, int] = field(default_factory=dict)
    #: Tokens spent by the runs created in the last 24 hours, every attempt included.
    tokens_24h: int = 0
    schedule_lag_seconds: float | None = None
    redis_error: str | None = None
    #: The consumer could not use this plugin's stream: the error, since when, how many times.
    stream_error: dict[str, Any] | None = None
    queue: str = "runs"
    #: The cap on runs in flight across the cluster (None: no cap).
    max_concurrency: int | None = None
    #: Runs holding a slot (dispatched or running; capped plugins only).
    in_flight: int | None = None
    #: Entries not yet sent to Celery: unread, plus (capped plugins) pending ones held back.
    waiting: int | None = None
    model: ModelStatus | None = None


@dataclass
class ModelStatus:
    name: str
    #: Requests let through in the current window, out of ``budget_limit`` (None: no budget).
    budget_used: int = 0
    budget_limit: int | None = None
    window_seconds: float = 60.0
    #: Set while a provider's 429 pauses the model.
    paused_until: datetime | None = None


def _stream_figures(client: redis.Redis, status: PluginStatus) -> None:
    stream = keys.stream(status.plugin)
    try:
        status.stream_length = int(client.xlen(stream))
        status.dead_letters = int(client.xlen(keys.dead_letters(status.plugin)))
        if not status.stream_length:
            return
        groups = {g["name"]: g for g in client.xinfo_groups(stream)}
        group = groups.get(keys.GROUP)
        if group is None:
            return
        status.pending = int(group.get("pending", 0))
        lag = group.get("lag")
        status.group_lag = int(lag) if lag is not None else None
        if status.pending:
            oldest = client.xpending_range(stream, keys.GROUP, min="-", max="+", count=1)
            if oldest:
                status.oldest_pending_idle_seconds = int(oldest[0]["time_since_delivered"]) / 1000.0
    except redis.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            status.redis_error = str(exc)
    except redis.RedisError as exc:
        status.redis_error = f"Redis unavailable: {exc}"


def _stream_errors(client: redis.Redis) -> dict[str, dict[str, Any]]:
    try:
        raw = client.hgetall(keys.stream_errors())
    except redis.ResponseError:
        return {}
    out = {}
    for plugin, value in raw.items():  # type: ignore[union-attr]
        try:
            out[str(plugin)] = dict(json.loads(value))
        except (ValueError, TypeError):
            out[str(plugin)] = {"error": str(value)[:200]}
    return out


def pipeline_status(*, now: datetime | None = None) -> list[PluginStatus]:
    """One :class:`PluginStatus` per plugin known to the database."""
    now = now or utcnow()
    with session_scope() as session:
        plugins = session.execute(
            select(
                PluginRow.id, PluginRow.name, PluginRow.enabled, PluginRow.max_concurrency, PluginRow.queue
            ).order_by(PluginRow.name)
        ).all()
        counts = session.execute(
            select(
                PluginRun.plugin_id,
                PluginRun.status,
                func.count(),
                func.coalesce(func.sum(PluginRun.total_tokens), 0),
            )
            .where(PluginRun.created_at >= now - timedelta(hours=24))
            .group_by(PluginRun.plugin_id, PluginRun.status)
        ).all()
        oldest_due = dict(
            session.execute(
                select(UserPluginConfig.plugin_id, func.min(UserPluginConfig.next_run_at))
                .where(UserPluginConfig.enabled, UserPluginConfig.next_run_at <= now)
                .group_by(UserPluginConfig.plugin_id)
            ).all()
        )
    by_plugin: dict[int, dict[str, int]] = {}
    tokens: dict[int, int] = {}
    for plugin_id, run_status, count, spent in counts:
        by_plugin.setdefault(plugin_id, {})[run_status] = count
        tokens[plugin_id] = tokens.get(plugin_id, 0) + int(spent)
    client = get_redis()
    client.ping()  # Redis down is the caller's error (one line), not one note per plugin
    broken = _stream_errors(client)
    settings = get_settings()
    model = _model_figures(client, now)
    result = []
    for plugin_id, name, enabled, manifest_cap, queue in plugins:
        item = PluginStatus(
            plugin=name,
            enabled=enabled,
            runs_24h=by_plugin.get(plugin_id, {}),
            tokens_24h=tokens.get(plugin_id, 0),
        )
        item.queue, item.model = queue, model
        item.max_concurrency = plugin_cap(name, manifest_cap, settings)
        due = oldest_due.get(plugin_id)
        if due is not None:
            if due.tzinfo is None:  # SQLite aggregates lose the zone
                due = due.replace(tzinfo=UTC)
            item.schedule_lag_seconds = max(0.0, (now - due).total_seconds())
        _stream_figures(client, item)
        item.stream_error = broken.get(name)
        _flow_figures(client, item)
        result.append(item)
    return result


def _flow_figures(client: redis.Redis, status: PluginStatus) -> None:
    if status.redis_error:
        return
    lag = status.group_lag if status.group_lag is not None else 0
    status.waiting = lag
    if status.max_concurrency is None:
        return
    try:
        status.in_flight = slots.in_flight(client, [status.plugin])[status.plugin]
    except redis.RedisError as exc:
        status.redis_error = f"Redis unavailable: {exc}"
        return
    # Pending entries beyond the runs holding slots are held back by a consumer.
    status.waiting = lag + max(0, status.pending - status.in_flight)


def _model_figures(client: redis.Redis, now: datetime) -> ModelStatus | None:
    try:
        # The budget the cluster runs (published by its workers and consumers), newest first;
        # this shell's own settings only when nothing was published yet.
        budget = next(iter(published(client)), None) or model_budget(get_settings())
        state = budget.peek(client)
    except redis.RedisError:
        return None  # each plugin row reports Redis being down
    paused = now + timedelta(seconds=state.paused_seconds) if state.paused_seconds else None
    return ModelStatus(budget.model, state.used, budget.limit, budget.window_seconds, paused)
