"""The consumer's health signal: a per-host key with a TTL, and the check behind ``--check``.

Guarantees: a live consumer refreshes ``consumer_heartbeat(<host>)`` at least
every ``consumer_heartbeat_seconds``; the key expires three intervals after
the last refresh, so a hung or killed consumer reads as dead within that time.
A consumer that stops cleanly deletes the key only if it still holds it, so
another consumer on the same host is not reported dead.
"""

from __future__ import annotations

import socket

import redis

from app.config import get_settings
from app.redis_client import get_redis
from app.streams import keys

# Compare-and-delete: only the consumer that wrote the key removes it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def ttl_seconds() -> int:
    """How long a heartbeat stays valid without a refresh."""
    return max(3, round(3 * get_settings().consumer_heartbeat_seconds))


def beat(consumer: str, *, host: str | None = None, client: redis.Redis | None = None) -> None:
    """Record that ``consumer`` on ``host`` (default: this host) is alive."""
    client = client or get_redis()
    client.set(keys.consumer_heartbeat(host or socket.gethostname()), consumer, ex=ttl_seconds())


def release(consumer: str, *, host: str | None = None, client: redis.Redis | None = None) -> None:
    """Delete the heartbeat if ``consumer`` wrote it last (clean shutdown)."""
    client = client or get_redis()
    key = keys.consumer_heartbeat(host or socket.gethostname())
    client.eval(_RELEASE, 1, key, consumer)  # type: ignore[no-untyped-call]


def alive(*, host: str | None = None, client: redis.Redis | None = None) -> str | None:
    """The name of a live consumer on ``host`` (default: this host), or None."""
    client = client or get_redis()
    value = client.get(keys.consumer_heartbeat(host or socket.gethostname()))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
