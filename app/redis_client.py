"""Redis connections, one pool per process (re-created after a fork)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import redis
from redis.commands.core import Script

from app.config import get_settings

_clients: dict[tuple[int, str, bool], redis.Redis] = {}


def get_redis(*, decode_responses: bool = True) -> redis.Redis:
    """The process's client for ``REDIS_URL``.

    Keyed by pid so a forked child never shares its parent's sockets. Socket
    timeouts are set so a dead server surfaces as an error instead of a hang;
    blocking reads pass their own longer timeout.
    """
    url = get_settings().redis_url
    key = (os.getpid(), url, decode_responses)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            url,
            decode_responses=decode_responses,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        _clients[key] = client
    return client


def reset_clients() -> None:
    """Forget every client (tests switching REDIS_URL, or after a fork)."""
    for client in _clients.values():
        client.close()
    _clients.clear()


def as_text(value: Any) -> str:
    """A reply value as text, whichever ``decode_responses`` the client had.

    Bytes are decoded as UTF-8 with invalid sequences replaced, so a binary
    field (a malformed stream entry) never raises; anything else goes
    through ``str``. Ids, names and counters are ASCII, so for them this is exact.
    """
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@cache
def lua_script(text: str) -> Script:
    """The registered script for ``text``: call it with ``keys``, ``args`` and the ``client`` to run on.

    redis-py's ``register_script``: EVALSHA, and on NOSCRIPT (a restarted or
    flushed Redis) SCRIPT LOAD and once more. Registered on a client that never
    connects (it only encodes the text for the SHA), so one object serves every
    client and process; a call without ``client=`` is a bug, not a default.
    """
    return redis.Redis().register_script(text)
