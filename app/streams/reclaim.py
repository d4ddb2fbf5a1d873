"""Settling entries that were delivered before: the reclaim loop's decisions and their effects.

An entry reaches here when XAUTOCLAIM took it over (idle longer than the
visibility timeout: its consumer or worker may be dead) or when a restarted
consumer reads its own pending entries (ID 0). Claiming counts a delivery, so
every entry is judged against its run row (principle 1: the row decides):

=====================================  =========================================
entry / run                            action
=====================================  =========================================
malformed, unknown version, wrong      dead letter with the parser's reason
stream
run missing                            dead letter ``run_not_found`` (entries
                                       younger than the visibility timeout wait:
                                       the producer's commit may be in flight)
run completed / failed / cancelled     XACK (the worker's own ack was lost)
run processing, lease alive            keep: XCLAIM RETRYCOUNT n-1 JUSTID resets
                                       the idle time and takes back the count
run pending                            XACK: the outbox owns pending runs and
                                       publishes a fresh entry when it is due
Celery's queue not empty, and the run  keep: its task is most likely still waiting
queued or already re-dispatched (and   in the broker behind others; re-dispatching
claimed fewer than ``max_attempts``    would only add duplicates to the backlog and
times since its last replay)           count deliveries towards a dead letter
delivered > max_deliveries times       dead letter ``max_deliveries``; run failed
otherwise                              re-dispatch to Celery
=====================================  =========================================

Terminal and live runs are checked before the delivery count, so a finished or
healthy long run is never dead-lettered. The backlog rule is bounded by the
run's claims: a run whose workers took it ``max_attempts`` times and died each
time is a poison run, not a waiting one, so it is re-dispatched and counted
towards ``max_deliveries`` even while a backlog lasts (a backlog that never
drains would otherwise keep it pending forever). Entries the stream no longer holds
(trimmed or deleted while pending) have their run re-published from its row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import redis

from app import keys
from app.db.models import RunStatus
from app.db.runs import RunState
from app.redis_client import as_text
from app.streams.envelope import Envelope, EnvelopeRejection, Reason


class Action(StrEnum):
    """What the consumer does with a settled entry."""

    DISPATCH = "dispatch"
    ACK = "ack"
    KEEP = "keep"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Entry:
    """One stream entry as read; empty ``fields`` means the stream no longer holds it."""

    plugin: str
    id: str
    fields: Mapping[Any, Any]
    #: The group's delivery counter after this read or claim (1 for a first delivery).
    delivery_count: int = 1

    @property
    def deleted(self) -> bool:
        """True if the entry was trimmed or deleted while pending."""
        return not self.fields

    @property
    def added_ms(self) -> int:
        """Milliseconds part of the id: when the entry was added (Redis's clock)."""
        return int(self.id.partition("-")[0])


@dataclass(frozen=True)
class Decision:
    """An action and why; ``reason`` is set for dead letters."""

    action: Action
    detail: str
    reason: Reason | None = None
    run_id: uuid.UUID | None = None


def rejection(entry: Entry, parsed: Envelope | EnvelopeRejection) -> Decision | None:
    """The dead-letter decision for an entry no run state can save (bad envelope, wrong stream)."""
    if isinstance(parsed, EnvelopeRejection):
        return Decision(Action.DEAD_LETTER, parsed.message, parsed.reason, parsed.run_id)
    if parsed.plugin != entry.plugin:
        detail = f"envelope names plugin {parsed.plugin!r} but was read from {entry.plugin!r}'s stream"
        return Decision(Action.DEAD_LETTER, detail, Reason.WRONG_STREAM, parsed.run_id)
    return None


def decide(
    entry: Entry,
    parsed: Envelope | EnvelopeRejection,
    state: RunState | None,
    *,
    now: datetime,
    max_deliveries: int,
    visibility_ms: int,
    broker_backlog: int = 0,
    max_attempts: int | None = None,
) -> Decision:
    """The action for an entry delivered before, given its run's state (pure: no I/O).

    ``broker_backlog`` is how many ``execute_run`` messages wait in Celery's queue;
    ``max_attempts`` bounds the backlog rule (None: unbounded).
    """
    rejected = rejection(entry, parsed)
    if rejected is not None or isinstance(parsed, EnvelopeRejection):  # the second test only narrows the type
        return rejected or Decision(Action.DEAD_LETTER, "invalid envelope")
    run_id = parsed.run_id
    if state is None:
        if int(now.timestamp() * 1000) - entry.added_ms < visibility_ms:
            return Decision(Action.KEEP, "run not visible yet", run_id=run_id)
        return Decision(Action.DEAD_LETTER, f"run {run_id} not found", Reason.RUN_NOT_FOUND, run_id)
    if state.status.is_terminal:
        return Decision(Action.ACK, f"run is {state.status}", run_id=run_id)
    if state.lease_alive(now):
        return Decision(Action.KEEP, "run is processing under a live lease", run_id=run_id)
    if state.status == RunStatus.PENDING:
        return Decision(Action.ACK, "run is pending: the outbox publishes it again", run_id=run_id)
    # While Celery's queue holds a backlog, a task we already sent is most likely still in
    # it: a queued run's first task, or the re-dispatch an earlier reclaim sent for a run whose
    # worker died (delivery 1 was the read, 2 our first re-dispatch). Sending more would only
    # lengthen the backlog and count deliveries towards a dead letter; the first re-dispatch
    # of a dead worker's run is never held back.
    poison = max_attempts is not None and state.tries >= max_attempts
    if broker_backlog > 0 and (state.status == RunStatus.QUEUED or (entry.delivery_count > 2 and not poison)):
        return Decision(Action.KEEP, "its task is probably waiting behind a Celery backlog", run_id=run_id)
    if entry.delivery_count > max_deliveries:
        detail = (
            f"delivered {entry.delivery_count - 1} times without finishing (max_deliveries={max_deliveries})"
        )
        return Decision(Action.DEAD_LETTER, detail, Reason.MAX_DELIVERIES, run_id)
    return Decision(Action.DISPATCH, f"run is {state.status}", run_id=run_id)


def decide_all(
    entries: list[Entry],
    parsed: Mapping[str, Envelope | EnvelopeRejection],
    states: Mapping[uuid.UUID, RunState],
    *,
    now: datetime,
    max_deliveries: int,
    visibility_ms: int,
    broker_backlog: int = 0,
    max_attempts: int | None = None,
) -> list[tuple[Entry, Decision]]:
    """:func:`decide` for each entry, with its parsed envelope and its run's state."""
    decided = []
    for entry in entries:
        envelope = parsed[entry.id]
        state = states.get(envelope.run_id) if isinstance(envelope, Envelope) else None
        decision = decide(
            entry,
            envelope,
            state,
            now=now,
            max_deliveries=max_deliveries,
            visibility_ms=visibility_ms,
            broker_backlog=broker_backlog,
            max_attempts=max_attempts,
        )
        decided.append((entry, decision))
    return decided


# ---- Redis side ------------------------------------------------------------------------------


def entries_from(plugin: str, pairs: Any) -> list[Entry]:
    """Entries from an XREADGROUP/XAUTOCLAIM ``[(id, fields), ...]`` reply (fields may be empty)."""
    return [Entry(plugin, as_text(entry_id), entry_fields or {}) for entry_id, entry_fields in pairs or []]


def autoclaim_page(
    client: redis.Redis, plugin: str, *, consumer: str, min_idle_ms: int, cursor: str, count: int
) -> tuple[str, list[Entry]]:
    """One XAUTOCLAIM page: the next cursor and the entries, deleted ones with empty fields."""
    reply: Any = client.xautoclaim(keys.stream(plugin), keys.GROUP, consumer, min_idle_ms, cursor, count)
    entries = entries_from(plugin, reply[1])
    # Redis 7 also reports entries deleted while pending (and drops them from the PEL).
    entries += [Entry(plugin, as_text(i), {}) for i in (reply[2] if len(reply) > 2 else [])]
    return as_text(reply[0]), entries


def with_counts(client: redis.Redis, plugin: str, entries: list[Entry]) -> list[Entry]:
    """The entries still pending, each with the group's delivery counter (deleted ones kept as is)."""
    live = [e for e in entries if not e.deleted]
    key = keys.stream(plugin)
    with client.pipeline(transaction=False) as pipe:
        for entry in live:
            pipe.xpending_range(key, keys.GROUP, entry.id, entry.id, 1)
        replies = pipe.execute()
    counted = [
        Entry(e.plugin, e.id, e.fields, int(rows[0]["times_delivered"]))
        for e, rows in zip(live, replies, strict=True)
        if rows
    ]
    return counted + [e for e in entries if e.deleted]


def keep(client: redis.Redis, plugin: str, *, consumer: str, entries: list[Entry]) -> None:
    """Reset the idle time of ``entries`` and undo the delivery the read or claim counted."""
    if not entries:
        return
    with client.pipeline(transaction=False) as pipe:
        for e in entries:
            pipe.xclaim(
                keys.stream(plugin),
                keys.GROUP,
                consumer,
                0,
                [e.id],
                retrycount=max(e.delivery_count - 1, 0),
                justid=True,
            )
        pipe.execute()
