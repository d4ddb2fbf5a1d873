"""The consumer's health signal: a per-host key with a TTL, and the check behind ``--check``.

Guarantees: a live consumer refreshes ``consumer_heartbeat(<host>)`` at least
every ``consumer_heartbeat_seconds`` while its loop works; the key expires
three intervals after the last refresh, so a hung or killed consumer reads as
dead within that time. The key also says whether the loop is failing: a loop
that raised :data:`FAILING_ITERATIONS` times in a row (Redis answering but a
command failing, the broker refusing tasks...) reads as unhealthy at once, with
how long it has been failing, even though the process itself is alive.
A consumer that stops cleanly deletes the key only if it still holds it, so
another consumer on the same host is not reported dead.

Value: ``<consumer>\\n<consecutive failures>\\n<failing since, epoch seconds or empty>``
(a plain ``<consumer>`` from an older version reads as healthy).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from app import keys
from app.config import get_settings
from app.redis_client import get_redis, lua_script

#: Consecutive failed iterations after which ``--check`` reports the consumer unhealthy.
FAILING_ITERATIONS = 3

# Compare-and-delete: only the consumer that wrote the key removes it.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or (v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n') then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Health:
    """What the heartbeat key says about this host's consumer."""

    consumer: str
    failures: int = 0
    failing_since: datetime | None = None

    @property
    def healthy(self) -> bool:
        """False once the loop has failed :data:`FAILING_ITERATIONS` times in a row."""
        return self.failures < FAILING_ITERATIONS


def ttl_seconds() -> int:
    """How long a heartbeat stays valid without a refresh."""
    return max(3, round(3 * get_settings().consumer_heartbeat_seconds))


def beat(
    consumer: str,
    *,
    failures: int = 0,
    failing_since: datetime | None = None,
    host: str | None = None,
    client: redis.Redis | None = None,
) -> None:
    """Record that ``consumer`` on ``host`` (default: this host) is alive, and whether its loop fails."""
    client = client or get_redis()
    since = f"{failing_since.timestamp():.3f}" if failing_since is not None else ""
    value = f"{consumer}\n{failures}\n{since}"
    client.set(keys.consumer_heartbeat(host or socket.gethostname()), value, ex=ttl_seconds())


def release(consumer: str, *, host: str | None = None, client: redis.Redis | None = None) -> None:
    """Delete the heartbeat if ``consumer`` wrote it last (clean shutdown)."""
    client = client or get_redis()
    key = keys.consumer_heartbeat(host or socket.gethostname())
    lua_script(_RELEASE)(keys=[key], args=[consumer], client=client)


def health(*, host: str | None = None, client: redis.Redis | None = None) -> Health | None:
    """The heartbeat of ``host``'s consumer (default: this host), or None if there is none."""
    client = client or get_redis()
    value = client.get(keys.consumer_heartbeat(host or socket.gethostname()))
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    name, _, rest = text.partition("\n")
    count, _, since = rest.partition("\n")
    failing_since = datetime.fromtimestamp(float(since), UTC) if since else None
    return Health(name, int(count) if count.isdigit() else 0, failing_since)


def alive(*, host: str | None = None, client: redis.Redis | None = None) -> str | None:
    """The name of a live, healthy consumer on ``host`` (default: this host), or None."""
    found = health(host=host, client=client)
    return found.consumer if found is not None and found.healthy else None
