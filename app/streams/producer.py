"""The producer: publish runs to their plugin's stream, and trim streams safely.

Guarantees:

* :func:`publish_runs` writes every entry in one pipeline round trip (one XADD
  per run, each to its own plugin's stream), then records the entry ids
  on the rows and moves pending ones to ``queued`` with one batched UPDATE in
  the caller's session. The caller commits. If Redis fails nothing is marked;
  if the commit fails after the XADDs, the entries name runs still ``pending``,
  which the worker's compare-and-set claim handles like any duplicate.
* A stream key that refuses the XADD (overwritten with another type) costs only
  that plugin's runs: they stay ``pending`` and are logged; the others publish.
* Publishing a run twice is harmless: the worker's claim makes the second
  delivery a no-op, and the consumer acknowledges entries a newer one replaced.
* :func:`trim_stream` drops only entries older than the retention *and* older
  than both the oldest pending entry and the first undelivered one, so an entry
  that is pending, or not yet read, is never trimmed. There is no MAXLEN.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import keys
from app.db import runs
from app.db.models import TERMINAL_STATUSES, PluginRow, PluginRun
from app.redis_client import as_text, get_redis
from app.streams.envelope import Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRef:
    """What an entry needs to name a run; ``attempt`` is the attempt this entry asks for."""

    run_id: uuid.UUID
    plugin: str
    user_id: int
    attempt: int = 1


@dataclass(frozen=True)
class Published:
    """One entry written: the run, its plugin and the new entry id."""

    run_id: uuid.UUID
    plugin: str
    stream_id: str


def publish_runs(
    session: Session, refs: Sequence[RunRef], *, now: datetime, client: redis.Redis | None = None
) -> list[Published]:
    """XADD one entry per run (one round trip), then mark the runs ``queued`` in ``session``.

    Raises a ``redis.RedisError`` (nothing marked) if the pipeline fails.
    """
    if not refs:
        return []
    client = client or get_redis()
    with client.pipeline(transaction=False) as pipe:
        for ref in refs:
            envelope = Envelope(ref.run_id, ref.plugin, ref.user_id, now, ref.attempt)
            pipe.xadd(keys.stream(ref.plugin), envelope.to_fields())  # type: ignore[arg-type]
        # Ring the doorbell (kept at one element): an idle consumer wakes now, not at its next poll.
        pipe.lpush(keys.doorbell(), 1)
        pipe.ltrim(keys.doorbell(), 0, 0)
        # Per-command errors come back as values: one plugin's broken stream key (WRONGTYPE)
        # leaves that plugin's runs pending (the outbox retries them), never everyone's.
        ids = pipe.execute(raise_on_error=False)[: len(refs)]
    published = [
        Published(ref.run_id, ref.plugin, entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
        for ref, entry_id in zip(refs, ids, strict=True)
        if not isinstance(entry_id, Exception)
    ]
    refused = {
        ref.plugin: reply for ref, reply in zip(refs, ids, strict=True) if isinstance(reply, Exception)
    }
    for plugin, error in refused.items():
        log.error(
            "could not publish to plugin %s's stream (%s): its runs stay pending and are retried",
            plugin,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
            extra={"plugin": plugin},
        )
    runs.mark_queued(session, [(p.run_id, p.stream_id) for p in published], now=now)
    return published


def load_refs(
    session: Session,
    *,
    run_ids: Iterable[uuid.UUID] | None = None,
    plugin: str | None = None,
    stream_ids: Iterable[str] | None = None,
) -> list[RunRef]:
    """References to the non-terminal runs selected by id, or by plugin and last entry id.

    Entry ids are unique per stream only, so ``stream_ids`` requires ``plugin``.
    """
    query: Any = (
        select(PluginRun.run_id, PluginRow.name, PluginRun.user_id, PluginRun.attempts)
        .join(PluginRow, PluginRow.id == PluginRun.plugin_id)
        .where(PluginRun.status.notin_(TERMINAL_STATUSES))
    )
    if run_ids is not None:
        query = query.where(PluginRun.run_id.in_(list(run_ids)))
    if stream_ids is not None:
        if plugin is None:
            raise ValueError("stream_ids are unique per stream: name the plugin")
        query = query.where(PluginRun.stream_id.in_(list(stream_ids)))
    if plugin is not None:
        query = query.where(PluginRow.name == plugin)
    query = query.order_by(PluginRun.id)
    return [RunRef(r.run_id, r.name, r.user_id, r.attempts + 1) for r in session.execute(query)]


@dataclass(frozen=True)
class TrimResult:
    """What one trim did: the MINID used (None: nothing may be trimmed) and entries removed."""

    plugin: str
    min_id: str | None
    removed: int


def _id_to_int(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def safe_min_id(*, cutoff_ms: int, oldest_pending: str | None, last_delivered: str | None) -> str | None:
    """The lowest id that must be kept: min(retention cutoff, oldest pending, first undelivered).

    None when the group has never delivered anything: then every entry is
    still waiting for its first read and none may go.
    """
    if last_delivered is None:
        return None
    ms, seq = _id_to_int(last_delivered)
    candidates = [(cutoff_ms, 0), (ms, seq + 1)]
    if oldest_pending is not None:
        candidates.append(_id_to_int(oldest_pending))
    low = min(candidates)
    return f"{low[0]}-{low[1]}"


def trim_stream(
    plugin: str, *, now: datetime, retention_seconds: int, client: redis.Redis | None = None
) -> TrimResult:
    """Trim ``plugin``'s stream by age (approximate MINID), never past a pending or unread entry."""
    client = client or get_redis()
    key = keys.stream(plugin)
    # One MULTI on one key: the group's position and its oldest pending entry are read together.
    with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_groups(key)
        pipe.xpending(key, keys.GROUP)
        try:
            groups, pending = pipe.execute()
        except redis.ResponseError:  # no stream or no group yet: nothing was ever delivered
            return TrimResult(plugin, None, 0)
    group = next((g for g in groups if as_text(g.get("name")) == keys.GROUP), None)
    if group is None:
        return TrimResult(plugin, None, 0)
    last = group.get("last-delivered-id")
    last = None if last is None else as_text(last)
    cutoff = now - timedelta(seconds=retention_seconds)
    min_id = safe_min_id(
        cutoff_ms=int(cutoff.timestamp() * 1000),
        oldest_pending=as_text(pending.get("min")) if pending.get("pending") else None,
        last_delivered=None if last in (None, "0-0") else last,
    )
    if min_id is None:
        return TrimResult(plugin, None, 0)
    removed = client.xtrim(key, minid=min_id, approximate=True)
    return TrimResult(plugin, min_id, int(removed))  # type: ignore[arg-type]
