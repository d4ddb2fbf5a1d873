"""The stream consumer: one process of the consumer group that feeds Celery.

Shape (huey's): :meth:`StreamConsumer.initialize`, then
:meth:`StreamConsumer.loop_once` repeatedly (one iteration, ``now`` injected so
tests are deterministic), then :meth:`StreamConsumer.shutdown`. The process
(:mod:`app.streams.consumer_process`) owns signals, backoff and the heartbeat.

One iteration:

1. dispatch what a broker error left undispatched last time;
2. database phases, each when due, all skipped while PostgreSQL is down:
   re-read the enabled plugins (groups for new ones), settle this consumer's
   own pending entries (ID 0) once at start, reclaim entries idle longer than
   the visibility timeout (XAUTOCLAIM, see :mod:`app.streams.reclaim`), and mark
   dead-lettered runs failed;
3. housekeeping when due: trim each stream by age, drop idle empty consumers;
4. read new entries (``>``) and dispatch the valid ones; dead-letter the rest.

Flow control (:mod:`app.streams.gate`): every dispatch, first or re-dispatch,
passes the gate; what it holds back stays pending here and is offered again at
each iteration, and a plugin whose entries are held is not read meanwhile.

Guarantees: a valid new entry becomes one ``execute_run`` task and stays
pending (the worker acks it when its run is terminal); nothing is acked here
except entries whose run is terminal or pending, and dead letters. A broker,
Redis or database failure leaves entries pending, never lost. New entries are
dispatched without a database read: Redis alone carries the hot path and the
worker's claim is authoritative; the row is consulted when an entry comes back.

One plugin's broken stream is that plugin's problem: a Redis error on one
plugin's key (say it was overwritten with ``SET``: WRONGTYPE) takes that plugin
out of the reads, logs it, records it for ``first-sip status`` (hash
:func:`app.keys.stream_errors`) and is retried at every plugin refresh;
the other plugins keep flowing and the iteration does not fail.

One Redis server (Redis Cluster is not supported: docs/operations.md). Each
stream is read with its own XREADGROUP; the per-stream reads are pipelined
into one round trip. Blocking: first a non-blocking read of every stream; only when all were
empty, a BLPOP of up to ``stream_block_ms`` on the doorbell list every publish
pushes to (kept at one element). A busy stream never waits behind an idle one,
and an idle consumer wakes as soon as anything is published, whichever stream
it went to; a missed ring costs at most ``stream_block_ms``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select

from app import keys
from app.config import Settings, get_settings
from app.db import runs
from app.db.engine import session_scope
from app.db.models import PluginRow
from app.flow.policy import plugin_cap
from app.redis_client import get_redis
from app.streams.dispatch import Dispatch, Dispatcher
from app.streams.dlq import move_to_dead_letters
from app.streams.dlq import reconcile as reconcile_dead_letters
from app.streams.envelope import Envelope, Reason, parse_entry
from app.streams.errors import DB_ERRORS
from app.streams.gate import FlowGate
from app.streams.groups import ensure_group, missing_group, remove_idle_consumers
from app.streams.producer import trim_stream
from app.streams.reclaim import Decision, Entry, entries_from, rejection
from app.streams.settle import Settler
from app.streams.stats import LoopStats

log = logging.getLogger(__name__)


def default_name() -> str:
    """``<host>-<pid>-<random>``: unique across hosts, processes and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class _Fail:
    run_id: Any
    #: Only fail the run if its row still names this entry (None: unconditionally).
    entry_id: str | None
    message: str


class StreamConsumer:
    """One member of the consumer group; see the module docstring for an iteration."""

    def __init__(
        self,
        *,
        name: str | None = None,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.name = name or self.settings.consumer_name or default_name()
        # Binary-safe: a garbage entry must reach the parser as bytes, not break the decoder.
        self.client = client or get_redis(decode_responses=False)
        self.dispatcher = dispatcher or Dispatcher()
        self.plugins: list[str] = []
        self.totals = LoopStats()
        self._undispatched: list[Dispatch] = []
        self._gate = FlowGate(client=self.client, consumer=self.name, settings=self.settings)
        self._fails: list[_Fail] = []
        self._settler = Settler(
            client=self.client,
            consumer=self.name,
            settings=self.settings,
            on_dispatch=self._dispatch,
            on_dead_letter=self._dead_letter,
            on_stream_error=self._stream_broken,
            queue_for=self.dispatcher.queue_for,
        )
        self._next: dict[str, datetime] = {}  # phase -> when it is next due
        self._db_down_since: datetime | None = None
        #: plugin -> (first error line, since, count) for streams this consumer cannot use.
        self.broken: dict[str, tuple[str, datetime, int]] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    def initialize(self, now: datetime) -> None:
        """Join the group on every plugin's stream; raises if Redis or PostgreSQL is unreachable."""
        self._refresh_plugins()
        self._settler.start(self.plugins)
        self._next = {"refresh": now, "reclaim": now, "housekeeping": now, "db_retry": now}
        # Runs a killed consumer dead-lettered but never failed: fail them now, before the
        # outbox sweep could publish them again.
        reconciled = reconcile_dead_letters(self.plugins, now=now, client=self.client)
        if reconciled:
            log.warning("failed %d run(s) whose entries were dead-lettered by a stopped consumer", reconciled)
        log.info("consumer %s joined group %r on %d stream(s)", self.name, keys.GROUP, len(self.plugins))

    def loop_once(self, now: datetime, *, block: bool = True) -> LoopStats:
        """One iteration; raises on a Redis or broker error (the runner backs off and calls again)."""
        stats = LoopStats()
        self._offer_held(stats)
        self._flush_dispatches(stats)
        self._database_phases(now, stats)
        if self._due("housekeeping", now, self.settings.stream_trim_interval_seconds):
            self._housekeeping(now)
        entries = self._read_new(block=block)
        stats.read += len(entries)
        self._handle_new(entries, now, stats)
        self.totals.add(stats)
        return stats

    def shutdown(self) -> None:
        """Give the broker connection back. Unfinished entries stay pending for the group."""
        self.dispatcher.close()

    # ---- scheduling --------------------------------------------------------------------------

    def _due(self, phase: str, now: datetime, every: float) -> bool:
        if now < self._next.get(phase, now):
            return False
        self._next[phase] = now + timedelta(seconds=every)
        return True

    def _database_phases(self, now: datetime, stats: LoopStats) -> None:
        settings = self.settings
        if self._db_down_since is not None and now < self._next["db_retry"]:
            return
        try:
            if self._due("refresh", now, settings.plugin_refresh_seconds):
                self._refresh_plugins()
            if self._settler.history:
                self._settler.settle_history(now, stats)
            if self._due("reclaim", now, settings.reclaim_interval_seconds):
                self._settler.reclaim(self.plugins, now, stats)
            self._settler.republish_deleted(now, stats)
            self._flush_fails(now)
        except DB_ERRORS as exc:
            if self._db_down_since is None:
                self._db_down_since = now
                log.warning(
                    "PostgreSQL unreachable (%s): new entries are still dispatched; reclaim and "
                    "dead-letter bookkeeping wait for it (entries stay pending). Check DATABASE_URL "
                    "and that PostgreSQL is up.",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
            # Retry once per reclaim interval, not on every iteration.
            retry = now + timedelta(seconds=settings.reclaim_interval_seconds)
            self._next["db_retry"] = self._next["refresh"] = self._next["reclaim"] = retry
            return
        if self._db_down_since is not None:
            log.info("PostgreSQL reachable again after %s", now - self._db_down_since)
            self._db_down_since = None

    # ---- plugins and housekeeping ------------------------------------------------------------

    def _refresh_plugins(self) -> None:
        with session_scope() as session:
            rows = session.execute(
                select(
                    PluginRow.name, PluginRow.enabled, PluginRow.max_concurrency, PluginRow.queue
                ).order_by(PluginRow.name)
            ).all()
        plugins = []
        caps = {name: plugin_cap(name, cap, self.settings) for name, _e, cap, _q in rows}
        self._gate.caps = {name: cap for name, cap in caps.items() if cap is not None}
        self._gate.queues = {name: queue for name, _e, _c, queue in rows}
        self.dispatcher.route(self._gate.queues)
        for name, enabled, _cap, _queue in rows:
            try:
                # Disabled plugins keep being drained while their stream exists.
                ensure_group(self.client, name, create_stream=enabled)
                readable = enabled or self.client.exists(keys.stream(name))
            except redis.ResponseError as exc:
                self._stream_broken(name, exc)
                continue
            if name in self.broken:
                self._stream_fixed(name)
            if readable:
                plugins.append(name)
        added, gone = set(plugins) - set(self.plugins), set(self.plugins) - set(plugins)
        if self.plugins and (added or gone):
            log.info("streams now read: %s (added %s, dropped %s)", plugins, sorted(added), sorted(gone))
        self.plugins = plugins

    def _housekeeping(self, now: datetime) -> None:
        idle_ms = self.settings.consumer_idle_removal_seconds * 1000
        for plugin in list(self.plugins):
            try:
                trim_stream(
                    plugin,
                    now=now,
                    retention_seconds=self.settings.stream_retention_seconds,
                    client=self.client,
                )
                removed = remove_idle_consumers(self.client, plugin, idle_ms=idle_ms, keep=self.name)
            except redis.ResponseError as exc:
                self._stream_broken(plugin, exc)
                continue
            if removed:
                log.info("removed idle consumers with nothing pending from %s: %s", plugin, removed)

    def _stream_broken(self, plugin: str, exc: Exception) -> None:
        """Take ``plugin``'s stream out of the reads until a refresh finds it usable again."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = self.broken.get(plugin)
        since, count = (known[1], known[2] + 1) if known else (datetime.now(UTC), 1)
        self.broken[plugin] = (message, since, count)
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        self._settler.history.pop(plugin, None)
        if known is None or known[0] != message:
            log.error(
                "stream of plugin %s is unusable (%s): its runs wait, the other plugins go on; retried "
                "every %.0fs. Check the key %s (was it overwritten?)",
                plugin,
                message,
                self.settings.plugin_refresh_seconds,
                keys.stream(plugin),
                extra={"plugin": plugin},
            )
        record = {"error": message[:500], "since": since.isoformat(), "count": count, "consumer": self.name}
        try:
            self.client.hset(keys.stream_errors(), plugin, json.dumps(record))
        except redis.RedisError:
            log.debug("could not record the stream error of %s", plugin, exc_info=True)

    def _stream_fixed(self, plugin: str) -> None:
        message, since, _count = self.broken.pop(plugin)
        log.info("stream of plugin %s usable again (was: %s since %s)", plugin, message, since.isoformat())
        self.client.hdel(keys.stream_errors(), plugin)

    # ---- new entries -------------------------------------------------------------------------

    def _read_new(self, *, block: bool) -> list[Entry]:
        # A plugin whose entries flow control holds back is not read: the rest wait unread.
        streams = [p for p in self.plugins if p not in self._settler.history and not self._gate.holding(p)]
        if not streams and (self._settler.history or not self._gate.held_count):
            return []
        count = self.settings.stream_read_count
        replies: list[Any] = []
        if streams:
            with self.client.pipeline(transaction=False) as pipe:
                for plugin in streams:
                    pipe.xreadgroup(keys.GROUP, self.name, {keys.stream(plugin): ">"}, count=count)
                # A provider's 429 pause, read in the same round trip (flow control).
                pipe.pttl(self._gate.pause_key)
                *replies, pause = pipe.execute(raise_on_error=False)
            self._gate.note_pause(pause)
        entries: list[Entry] = []
        for plugin, reply in zip(streams, replies, strict=True):
            if isinstance(reply, redis.ResponseError) and missing_group(reply):
                # Someone deleted the stream or the group: recreate it and read it next time.
                log.warning("group missing on %s's stream; recreating it", plugin)
                ensure_group(self.client, plugin)
                continue
            if isinstance(reply, redis.ResponseError):
                self._stream_broken(plugin, reply)
                continue
            if isinstance(reply, Exception):
                raise reply
            for _key, pairs in reply or []:
                entries.extend(entries_from(plugin, pairs))
        block_ms = self.settings.stream_block_ms
        if entries or not block or block_ms <= 0:
            return entries
        # Every stream was empty: sleep on the producers' doorbell (see the module docstring).
        # The next iteration's non-blocking read picks up whatever rang it. Workers ring it too
        # when a capped plugin's run ends; a budget's next turn shortens the sleep.
        self.client.blpop([keys.doorbell()], timeout=self._gate.block_seconds(block_ms / 1000))
        return []

    def _handle_new(self, entries: list[Entry], now: datetime, stats: LoopStats) -> None:
        dispatches, rejected = [], []
        for entry in entries:
            parsed = parse_entry(entry.fields)
            decision = rejection(entry, parsed)
            if decision is None and isinstance(parsed, Envelope):
                dispatches.append(Dispatch(parsed.run_id, entry.plugin, entry.id, attempt=parsed.attempt))
            elif decision is not None:
                rejected.append((entry, decision))
        self._dispatch(dispatches, stats)
        for entry, decision in rejected:
            self._dead_letter(entry, decision, now, stats)

    def _dispatch(self, items: list[Dispatch], stats: LoopStats) -> None:
        admitted = self._gate.admit(items)  # what flow control holds back stays pending here
        stats.held += self._gate.newly_held
        self._undispatched.extend(admitted)
        self._flush_dispatches(stats)

    def _offer_held(self, stats: LoopStats) -> None:
        """Offer the held-back entries to the gate again, and keep them ours while they wait."""
        if not self._gate.held_count:
            return
        self._gate.touch()
        self._dispatch([], stats)

    def _flush_dispatches(self, stats: LoopStats) -> None:
        if not self._undispatched:
            return
        # On a broker error the batch stays buffered (and pending in the stream) for the next try.
        self.dispatcher.dispatch(self._undispatched)
        stats.dispatched += len(self._undispatched)
        self._undispatched = []

    def _dead_letter(self, entry: Entry, decision: Decision, now: datetime, stats: LoopStats) -> None:
        assert decision.reason is not None
        move_to_dead_letters(
            self.client,
            plugin=entry.plugin,
            entry_id=entry.id,
            fields=entry.fields,
            reason=decision.reason,
            message=decision.detail,
            delivery_count=entry.delivery_count,
            consumer=self.name,
            now=now,
        )
        stats.dead_lettered += 1
        log.warning(
            "dead-lettered %s entry %s (%s): %s",
            entry.plugin,
            entry.id,
            decision.reason,
            decision.detail,
            extra={"plugin": entry.plugin, "run_id": str(decision.run_id) if decision.run_id else None},
        )
        if decision.run_id is not None:
            # A run whose only entry was a bad one would wait forever: fail it with the reason,
            # but only if the row still names this entry (max_deliveries: it does by definition).
            guard = None if decision.reason == Reason.MAX_DELIVERIES else entry.id
            self._fails.append(
                _Fail(decision.run_id, guard, runs.dead_letter_error(decision.reason, decision.detail[:1000]))
            )

    def _flush_fails(self, now: datetime) -> None:
        if not self._fails:
            return
        with session_scope() as session:
            states = runs.states(session, [f.run_id for f in self._fails])
            for fail in self._fails:
                state = states.get(fail.run_id)
                if state is None or (fail.entry_id is not None and state.stream_id != fail.entry_id):
                    continue
                runs.fail_unless_terminal(session, fail.run_id, error=fail.message, now=now)
        self._fails = []
