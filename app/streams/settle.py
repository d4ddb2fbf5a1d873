"""Settling entries delivered before: this consumer's own pending entries at start, and reclaim.

:class:`Settler` reads or claims such entries, asks :func:`app.streams.reclaim.decide`
what to do with each (given its run row), acks and keeps them itself, and hands
re-dispatches and dead letters back to the consumer through two callbacks, so
one code path sends tasks and one moves dead letters.

Guarantees: a claim that could not be judged (PostgreSQL down) is taken back
(the delivery it counted is undone, and its idle time reset), so an outage never
pushes an entry towards ``max_deliveries``; entries the stream no longer holds
are remembered until their runs are republished, even across outages.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from app import keys
from app.config import Settings
from app.db import runs
from app.db.engine import session_scope
from app.db.models import RunStatus
from app.streams.dispatch import Dispatch
from app.streams.envelope import Envelope, parse_entry
from app.streams.errors import DB_ERRORS
from app.streams.groups import ensure_group, missing_group
from app.streams.producer import load_refs, publish_runs
from app.streams.reclaim import (
    Action,
    Decision,
    Entry,
    autoclaim_page,
    decide_all,
    entries_from,
    keep,
    with_counts,
)
from app.streams.stats import LoopStats

log = logging.getLogger(__name__)

# A reclaim round follows XAUTOCLAIM's cursor at most this many pages per stream, then
# resumes from the saved cursor next round, so one huge backlog cannot stall the loop.
RECLAIM_PAGES = 10


class Settler:
    """Own pending entries (ID 0) once at start, then reclaim rounds; see the module docstring."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        consumer: str,
        settings: Settings,
        on_dispatch: Callable[[list[Dispatch], LoopStats], None],
        on_dead_letter: Callable[[Entry, Decision, datetime, LoopStats], None],
        on_stream_error: Callable[[str, Exception], None] | None = None,
        queue_for: Callable[[str], str],
    ) -> None:
        self.client, self.name, self.settings = client, consumer, settings
        #: The Celery queue a plugin's runs are sent to (its backlog is what ``decide`` weighs).
        self._queue_for = queue_for
        self._on_dispatch, self._on_dead_letter = on_dispatch, on_dead_letter
        #: Called with (plugin, error) when one stream's key refuses a command (the others go on).
        self._on_stream_error = on_stream_error
        #: plugin -> cursor in this consumer's own pending entries, until they are all settled.
        self.history: dict[str, str] = {}
        self._cursor: dict[str, str] = {}  # plugin -> XAUTOCLAIM cursor
        self._deleted: dict[str, set[str]] = {}  # plugin -> ids whose runs await republishing

    def start(self, plugins: list[str]) -> None:
        """Settle these streams' own pending entries before reading new ones."""
        self.history = dict.fromkeys(plugins, "0")

    def settle_history(self, now: datetime, stats: LoopStats) -> None:
        """Settle the next page of this consumer's own pending entries in each stream still to do."""
        for plugin, cursor in list(self.history.items()):
            try:
                key, count = keys.stream(plugin), self.settings.stream_read_count
                reply: Any = self.client.xreadgroup(keys.GROUP, self.name, {key: cursor}, count=count)
            except redis.ResponseError as exc:
                if not missing_group(exc):
                    if self._on_stream_error is None:
                        raise
                    self._on_stream_error(plugin, exc)
                    continue
                reply = None  # the stream is gone, and this consumer's pending entries with it
            entries = [e for _key, pairs in reply or [] for e in entries_from(plugin, pairs)]
            if not entries:
                del self.history[plugin]
                continue
            log.info("settling %d pending entries of %s left by a previous run", len(entries), plugin)
            self._settle(plugin, with_counts(self.client, plugin, entries), now, stats)
            self.history[plugin] = entries[-1].id

    def reclaim(self, plugins: list[str], now: datetime, stats: LoopStats) -> None:
        """One reclaim round: entries idle past the visibility timeout, in every stream."""
        min_idle = self.settings.visibility_timeout_seconds * 1000
        for plugin in list(plugins):
            cursor = self._cursor.get(plugin, "0-0")
            for _ in range(RECLAIM_PAGES):
                try:
                    cursor, entries = autoclaim_page(
                        self.client,
                        plugin,
                        consumer=self.name,
                        min_idle_ms=min_idle,
                        cursor=cursor,
                        count=self.settings.stream_read_count,
                    )
                except redis.ResponseError as exc:
                    if not missing_group(exc):
                        if self._on_stream_error is None:
                            raise
                        self._on_stream_error(plugin, exc)
                        break
                    log.warning("group missing on %s's stream; recreating it", plugin)
                    ensure_group(self.client, plugin)
                    cursor = "0-0"
                    break
                if entries:
                    stats.reclaimed += len(entries)
                    self._settle(plugin, with_counts(self.client, plugin, entries), now, stats)
                if cursor == "0-0":
                    break
            self._cursor[plugin] = cursor

    def _settle(self, plugin: str, entries: list[Entry], now: datetime, stats: LoopStats) -> None:
        # Remembered before any database call: XAUTOCLAIM has already forgotten them.
        self._deleted.setdefault(plugin, set()).update(e.id for e in entries if e.deleted)
        live = [e for e in entries if not e.deleted]
        parsed = {e.id: parse_entry(e.fields) for e in live}
        run_ids = [p.run_id for p in parsed.values() if isinstance(p, Envelope)]
        try:
            with session_scope() as session:
                states = runs.states(session, run_ids)
        except DB_ERRORS:
            # This read counted a delivery nobody made: take it back, and wait.
            keep(self.client, plugin, consumer=self.name, entries=live)
            raise
        # A backlog matters to queued runs, and to re-dispatched ones (delivered more than twice).
        waiting = any(
            state.status == RunStatus.QUEUED or state.status == RunStatus.PROCESSING
            for state in states.values()
        )
        decided = decide_all(
            live,
            parsed,
            states,
            now=now,
            max_deliveries=self.settings.max_deliveries,
            visibility_ms=self.settings.visibility_timeout_seconds * 1000,
            # A queued run's task may simply be waiting behind others in Celery's queue.
            broker_backlog=int(self.client.llen(keys.celery_queue(self._queue_for(plugin))))
            if waiting
            else 0,  # type: ignore[arg-type]
            max_attempts=self.settings.max_attempts,
        )
        acks = [e.id for e, d in decided if d.action == Action.ACK]
        if acks:
            self.client.xack(keys.stream(plugin), keys.GROUP, *acks)
            stats.acked += len(acks)
        kept = [e for e, d in decided if d.action == Action.KEEP]
        keep(self.client, plugin, consumer=self.name, entries=kept)
        stats.kept += len(kept)
        self._on_dispatch(
            [
                Dispatch(d.run_id, plugin, e.id, e.delivery_count, attempt=_attempt(parsed.get(e.id)))
                for e, d in decided
                if d.action == Action.DISPATCH and d.run_id
            ],
            stats,
        )
        for entry, decision in decided:
            if decision.action == Action.DEAD_LETTER:
                self._on_dead_letter(entry, decision, now, stats)
        actions = Counter(str(d.action) for _e, d in decided)
        log.info(
            "settled %d entries of %s delivered before: %s",
            len(entries),
            plugin,
            ", ".join(f"{action} {n}" for action, n in sorted(actions.items())) or "all deleted",
        )
        self.republish_deleted(now, stats)

    def republish_deleted(self, now: datetime, stats: LoopStats) -> None:
        """Entries gone from the stream while pending: publish their runs again from the rows."""
        for plugin, deleted in list(self._deleted.items()):
            if not deleted:
                continue
            ids = sorted(deleted)
            with session_scope() as session:
                refs = load_refs(session, plugin=plugin, stream_ids=ids)
                published = publish_runs(session, refs, now=now, client=self.client)
            # History reads leave deleted ids in the PEL (XAUTOCLAIM already dropped its own).
            self.client.xack(keys.stream(plugin), keys.GROUP, *ids)
            del self._deleted[plugin]
            stats.republished += len(published)
            log.warning(
                "%d entries of %s were deleted while pending; republished %d non-terminal run(s)",
                len(ids),
                plugin,
                len(published),
            )


def _attempt(parsed: object) -> int:
    return parsed.attempt if isinstance(parsed, Envelope) else 1
