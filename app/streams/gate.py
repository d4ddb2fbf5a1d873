"""The consumer's flow-control gate: which entries go to Celery now, and which wait in the stream.

:meth:`FlowGate.admit` takes the entries the consumer wants to dispatch and
returns those allowed now; the others are *held*: they stay pending in the
stream under this consumer, never sent to Celery, and are offered again (oldest
first) at every iteration, when a worker rings the doorbell at the end of a
run, or when the model's budget has room again. While it holds entries of a
plugin the consumer reads no new ones from that plugin's stream, so the rest
wait unread.

Rules, in order: nothing goes while the model is paused (a provider's 429);
with a request budget, at most ``limit - used - waiting in Celery`` entries go
(the queue never holds more runs than the budget can serve); a capped plugin's
entry goes only with a slot (:mod:`app.flow.slots`).

Guarantees:

* A plugin with no cap and a model with no budget cost no round trip: the
  consumer reads the pause (PTTL) in the same pipeline as its XREADGROUPs;
  otherwise one pipelined round trip per batch for the model and one for the
  slots.
* A held entry is never dead-lettered for having waited: its idle time is
  refreshed (XCLAIM ... JUSTID) every third of the visibility timeout, so the
  group's reclaim leaves it alone, and the delivery a reclaim counted for it
  is taken back until it is really dispatched. If this consumer dies, its held
  entries become idle and another consumer's reclaim offers them to its own
  gate: delayed, not lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import keys
from app.config import Settings
from app.flow import slots
from app.flow.budget import BudgetState
from app.flow.policy import model_budget
from app.flow.scripts import eval_all
from app.streams.dispatch import Dispatch

log = logging.getLogger(__name__)

#: When no read brought the pause state (every stream held back), Redis is asked at most this often.
PAUSE_CHECK_SECONDS = 0.5


@dataclass
class _Held:
    item: Dispatch
    #: When its idle time was last reset (monotonic seconds).
    touched: float


@dataclass
class FlowGate:
    """See the module docstring. ``caps`` and ``queues`` come from the consumer's plugin refresh."""

    client: Any
    consumer: str
    settings: Settings
    clock: Callable[[], float] = time.monotonic
    caps: dict[str, int] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    #: plugin -> entry id -> held entry, oldest first.
    held: dict[str, dict[str, _Held]] = field(default_factory=dict)
    #: Entries the last :meth:`admit` held that were not held before it.
    newly_held: int = 0
    _model_state: BudgetState | None = None
    _paused_until: float = 0.0
    _pause_noted: float = -1e9
    _last_touch: float = 0.0

    def __post_init__(self) -> None:
        self.budget = model_budget(self.settings)
        self._last_touch = self.clock()
        from app.flow.worker import publish_budget

        publish_budget(self.settings, client=self.client)

    # ---- queries -----------------------------------------------------------------------------

    def holding(self, plugin: str) -> bool:
        """True while entries of ``plugin`` wait here (its stream is not read meanwhile)."""
        return bool(self.held.get(plugin))

    @property
    def held_count(self) -> int:
        """Entries held, all plugins."""
        return sum(len(h) for h in self.held.values())

    def block_seconds(self, longest: float) -> float:
        """How long the consumer may sleep on the doorbell: until the budget or pause allows more."""
        if not self.held_count:
            return longest
        waits = [self._paused_until - self.clock()]
        if self._model_state is not None:
            waits.append(self._model_state.wait_seconds)
        wait = max(waits)
        return max(0.01, min(longest, wait)) if wait > 0 else longest

    @property
    def pause_key(self) -> str:
        """The model's pause key; the consumer reads its PTTL with every read of the streams."""
        return keys.pause(self.budget.model)

    def note_pause(self, reply: Any) -> None:
        """A PTTL reply for :attr:`pause_key` (ms left, negative when not paused)."""
        now = self.clock()
        ms = int(reply) if not isinstance(reply, Exception) else 0
        self._paused_until, self._pause_noted = now + max(ms, 0) / 1000, now

    # ---- admission ---------------------------------------------------------------------------

    def admit(self, items: list[Dispatch]) -> list[Dispatch]:
        """The entries that may go to Celery now (held ones first); the rest are held."""
        waiting = [h.item for per in self.held.values() for h in per.values()]
        self.newly_held = 0
        if not waiting and not items:
            return []
        if not waiting and not self.caps and self.budget.limit is None and not self._paused():
            return items  # the hot path: no flow control configured, and no pause
        seen = {(i.plugin, i.entry_id) for i in waiting}
        candidates = waiting + [i for i in items if (i.plugin, i.entry_id) not in seen]
        allowance = self._model_allowance()
        allowed = candidates if allowance is None else candidates[:allowance]
        admitted = self._take_slots(allowed)
        self._update_held(candidates, admitted)
        self._reclaimed_while_held([i for i in items if (i.plugin, i.entry_id) in seen])
        return admitted

    def _paused(self) -> bool:
        """Whether the model is paused; asks Redis only if no read brought the answer lately."""
        now = self.clock()
        if now - self._pause_noted >= PAUSE_CHECK_SECONDS:
            self.note_pause(self.client.pttl(self.pause_key))
            now = self.clock()
        return now < self._paused_until

    def _model_allowance(self) -> int | None:
        """How many entries may go for the model now (None: no limit)."""
        limited = self.budget.limit is not None
        if not limited:
            return 0 if self._paused() else None
        queues = sorted(set(self.queues.values())) if limited else []
        # Runs sent but not started yet will each make a request soon: they count against the room.
        reply, *lengths = eval_all(
            self.client,
            [self.budget.call(take=False)],
            also=[("LLEN", (keys.celery_queue(q),)) for q in queues],
        )
        for answer in (reply, *lengths):
            if isinstance(answer, Exception):
                raise answer
        backlog = sum(int(n) for n in lengths)
        state = self._model_state = BudgetState.from_reply(reply)
        self.note_pause(int(state.paused_seconds * 1000))
        if state.paused_seconds > 0:
            return 0
        return max(0, (self.budget.limit or 0) - state.used - backlog)

    def _take_slots(self, allowed: list[Dispatch]) -> list[Dispatch]:
        by_plugin: dict[str, list[Dispatch]] = {}
        for item in allowed:
            if item.plugin in self.caps:
                by_plugin.setdefault(item.plugin, []).append(item)
        if not by_plugin:
            return allowed
        lease = self.settings.dispatch_lease_seconds
        plugins = list(by_plugin)
        calls = [
            slots.acquire_call(
                p,
                [slots.member(i.run_id, i.attempt) for i in by_plugin[p]],
                cap=self.caps[p],
                lease_seconds=lease,
            )
            for p in plugins
        ]
        granted: dict[str, frozenset[str]] = {}
        for plugin, reply in zip(plugins, eval_all(self.client, calls), strict=True):
            if isinstance(reply, Exception):
                raise reply
            granted[plugin] = slots.grant_from(reply).granted
        return [
            i
            for i in allowed
            if i.plugin not in self.caps or slots.member(i.run_id, i.attempt) in granted[i.plugin]
        ]

    def _update_held(self, candidates: list[Dispatch], admitted: list[Dispatch]) -> None:
        went = {(i.plugin, i.entry_id) for i in admitted}
        now = self.clock()
        newly_held: list[Dispatch] = []
        released: list[Dispatch] = []
        for item in candidates:
            per = self.held.setdefault(item.plugin, {})
            if (item.plugin, item.entry_id) in went:
                if per.pop(item.entry_id, None) is not None:
                    released.append(item)
            elif item.entry_id not in per:
                per[item.entry_id] = _Held(item, now)
                newly_held.append(item)
        # A reclaim counted a delivery for an entry we hold: take it back until it really goes,
        # then restore it, so the count keeps meaning "times sent to Celery".
        self._set_counts([(i, i.delivery_count - 1) for i in newly_held if i.delivery_count > 1])
        self._set_counts([(i, i.delivery_count) for i in released if i.delivery_count > 1])
        self.newly_held = len(newly_held)
        if newly_held:
            log.debug("holding %d entries back (flow control)", len(newly_held))

    def _reclaimed_while_held(self, again: list[Dispatch]) -> None:
        """Entries we hold that a reclaim claimed again (their idle time lapsed): undo its count."""
        fixes = []
        for item in again:
            held = self.held.get(item.plugin, {}).get(item.entry_id)
            if held is None:
                continue  # it went to Celery in this very admit
            held.touched = self.clock()
            target = max(held.item.delivery_count - 1, 1)
            if item.delivery_count != target:
                fixes.append((item, target))
        self._set_counts(fixes)

    def _set_counts(self, items: list[tuple[Dispatch, int]]) -> None:
        if not items:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for item, count in items:
                pipe.xclaim(
                    keys.stream(item.plugin),
                    keys.GROUP,
                    self.consumer,
                    0,
                    [item.entry_id],
                    retrycount=count,
                    justid=True,
                )
            pipe.execute()

    # ---- keeping held entries ours ---------------------------------------------------------

    def touch(self) -> int:
        """Reset the idle time of entries held for a third of the visibility timeout; returns how many.

        An entry another consumer claimed meanwhile (we were too slow) is no longer ours:
        XCLAIM with a minimum idle time skips it, and we forget it.
        """
        interval = self.settings.visibility_timeout_seconds / 3
        now = self.clock()
        if now - self._last_touch < interval / 2:
            return 0
        self._last_touch = now
        due = [(p, h) for p, per in self.held.items() for h in per.values() if now - h.touched >= interval]
        if not due:
            return 0
        min_idle = int(interval * 500)  # half the interval, in ms
        with self.client.pipeline(transaction=False) as pipe:
            for plugin, h in due:
                pipe.xclaim(
                    keys.stream(plugin),
                    keys.GROUP,
                    self.consumer,
                    min_idle,
                    [h.item.entry_id],
                    retrycount=max(h.item.delivery_count - 1, 1),
                    justid=True,
                )
            replies = pipe.execute()
        for (plugin, h), reply in zip(due, replies, strict=True):
            if reply:
                h.touched = now
            else:
                self.held[plugin].pop(h.item.entry_id, None)
                log.info(
                    "held entry %s of %s was claimed by another consumer; dropped here",
                    h.item.entry_id,
                    plugin,
                )
        return len(due)
