"""Runs in flight per plugin, counted across the whole cluster and tied to leases.

One sorted set per capped plugin (:func:`app.keys.inflight`): member
``<run id>:<attempt>`` (:func:`member`), score when its slot expires (Redis's
clock, ms). The consumer takes a slot with a short *dispatch lease* when it
sends a stream entry (which names the attempt it asks for) to Celery; the
worker that claims the run holds it for the run's lease and renews it with the
lease heartbeat; the worker gives it back when the run ends, and a worker that
finds nothing to run for a delivery gives back that delivery's slot.

Guarantees: :func:`acquire` never grants more slots than the cap, however many
consumers call it at once (one script). A run holds at most one slot: a
redelivery of the same attempt (a reclaimed entry dispatched again) keeps it, a
new attempt takes over its run's earlier slot instead of counting twice, and a
stale delivery of an earlier attempt is granted without a slot; so a stale
delivery's release never frees the slot of the attempt that runs now. A slot
whose holder died (a SIGKILLed worker, a lost task) expires with its lease and
is taken back by the next :func:`acquire`, so slots are never leaked forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app import keys
from app.flow.scripts import ACQUIRE, COUNT, Call, eval_all
from app.redis_client import as_text


def member(run_id: object, attempt: int) -> str:
    """The slot member of one attempt of a run."""
    return f"{run_id}:{attempt}"


@dataclass(frozen=True)
class Grant:
    """One plugin's answer: the members (:func:`member`) granted, and how many runs are now in flight."""

    in_flight: int
    granted: frozenset[str]


def acquire_call(plugin: str, members: Sequence[str], *, cap: int, lease_seconds: float) -> Call:
    """The scripted call that takes slots for ``members`` (see :func:`acquire`), for :func:`eval_all`."""
    return ACQUIRE, [keys.inflight(plugin)], [cap, int(lease_seconds * 1000), *members]


def grant_from(reply: Any) -> Grant:
    """A :class:`Grant` from the reply of an :func:`acquire_call`."""
    return Grant(int(reply[0]), frozenset(as_text(r) for r in reply[1:]))


def acquire(client: Any, plugin: str, members: Sequence[str], *, cap: int, lease_seconds: float) -> Grant:
    """Take a slot for each member while fewer than ``cap`` are in flight (in order); see the module doc."""
    (reply,) = eval_all(client, [acquire_call(plugin, members, cap=cap, lease_seconds=lease_seconds)])
    if isinstance(reply, Exception):
        raise reply
    return grant_from(reply)


def hold(client: Any, plugin: str, slot: str, *, lease_seconds: float) -> None:
    """The worker's claim and each lease renewal: the attempt's ``slot`` (:func:`member`) lives
    ``lease_seconds`` more.

    Never refused: a claimed run is in flight whatever the cap says (its dispatch lease may
    have expired while its task waited in Celery's queue; it counts again from now).
    """
    acquire(client, plugin, [slot], cap=0, lease_seconds=lease_seconds)


def release(client: Any, plugin: str, slot: str, *, ring: bool = True) -> None:
    """Give ``slot`` (:func:`member`) back and ring the doorbell, so a consumer holding entries wakes now.

    Only that attempt's slot: a later attempt's slot of the same run is left alone.
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.inflight(plugin), slot)
        if ring:
            pipe.lpush(keys.doorbell(), 1)
            pipe.ltrim(keys.doorbell(), 0, 0)
        pipe.execute()


def in_flight(client: Any, plugins: Sequence[str]) -> dict[str, int]:
    """Unexpired slots per plugin (one round trip)."""
    replies = eval_all(client, [(COUNT, [keys.inflight(p)], []) for p in plugins])
    out = {}
    for plugin, reply in zip(plugins, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        out[plugin] = int(reply)
    return out
