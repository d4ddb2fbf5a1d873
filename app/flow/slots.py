"""Runs in flight per plugin, counted across the whole cluster and tied to leases.

One sorted set per capped plugin (:func:`app.keys.inflight`): member
the run id, score when its slot expires (Redis's clock, ms). The consumer takes
a slot with a short *dispatch lease* when it sends a run to Celery; the worker
that claims the run holds it for the run's lease and renews it with the lease
heartbeat; the worker gives it back when the run ends.

Guarantees: :func:`acquire` never grants more slots than the cap, however many
consumers call it at once (one script); a run that already holds a slot keeps
it (a re-dispatch costs no second slot); a slot whose holder died (a SIGKILLed
worker, a lost task) expires with its lease and is taken back by the next
:func:`acquire`, so slots are never leaked forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app import keys
from app.flow.scripts import ACQUIRE, COUNT, Call, eval_all
from app.redis_client import as_text


@dataclass(frozen=True)
class Grant:
    """One plugin's answer: the run ids that got a slot, and how many runs are now in flight."""

    in_flight: int
    granted: frozenset[str]


def acquire_call(plugin: str, run_ids: Sequence[str], *, cap: int, lease_seconds: float) -> Call:
    """The scripted call that takes slots for ``run_ids`` (see :func:`acquire`), for :func:`eval_all`."""
    return ACQUIRE, [keys.inflight(plugin)], [cap, int(lease_seconds * 1000), *run_ids]


def grant_from(reply: Any) -> Grant:
    """A :class:`Grant` from the reply of an :func:`acquire_call`."""
    return Grant(int(reply[0]), frozenset(as_text(r) for r in reply[1:]))


def acquire(client: Any, plugin: str, run_ids: Sequence[str], *, cap: int, lease_seconds: float) -> Grant:
    """Take a slot for each run while fewer than ``cap`` are in flight (in order); see the module doc."""
    (reply,) = eval_all(client, [acquire_call(plugin, run_ids, cap=cap, lease_seconds=lease_seconds)])
    if isinstance(reply, Exception):
        raise reply
    return grant_from(reply)


def hold(client: Any, plugin: str, run_id: str, *, lease_seconds: float) -> None:
    """The worker's claim and each lease renewal: the run holds its slot for ``lease_seconds`` more.

    Never refused: a claimed run is in flight whatever the cap says (its dispatch lease may
    have expired while its task waited in Celery's queue; it counts again from now).
    """
    acquire(client, plugin, [run_id], cap=0, lease_seconds=lease_seconds)


def release(client: Any, plugin: str, run_id: str, *, ring: bool = True) -> None:
    """Give the run's slot back and ring the doorbell, so a consumer holding entries wakes now."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.inflight(plugin), run_id)
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
