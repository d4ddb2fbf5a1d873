"""The consumer group on each plugin's stream: creating it, and pruning idle consumers.

Guarantees: :func:`ensure_group` is idempotent and safe to race (another
process creating the group first is success). :func:`remove_idle_consumers`
deletes a consumer only if, at the moment of deletion, it owns no pending
entry: the check and the delete run in one Lua script on the stream's key, so
a consumer that just read something is never deleted with its entries.
"""

from __future__ import annotations

import redis

from app import keys
from app.redis_client import as_text, lua_script

# XGROUP DELCONSUMER drops the consumer's pending entries: delete only when it has none,
# atomically, so a read racing with the removal cannot lose entries.
_DELETE_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def ensure_group(client: redis.Redis, plugin: str, *, create_stream: bool = True) -> bool:
    """Create the group on ``plugin``'s stream (from the first entry); True if it was created.

    ``create_stream=False`` leaves a missing stream alone (disabled plugins). The
    group starts at id 0, not ``$``: runs published before any consumer existed
    are delivered, not skipped.
    """
    key = keys.stream(plugin)
    if not create_stream and not client.exists(key):
        return False
    try:
        client.xgroup_create(key, keys.GROUP, id="0", mkstream=create_stream)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def missing_group(exc: Exception) -> bool:
    """True for the NOGROUP error: the stream (and so its group) was deleted under us."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def remove_idle_consumers(client: redis.Redis, plugin: str, *, idle_ms: int, keep: str) -> list[str]:
    """Delete consumers idle longer than ``idle_ms`` that own nothing (never ``keep``)."""
    key = keys.stream(plugin)
    try:
        consumers = client.xinfo_consumers(key, keys.GROUP)
    except redis.ResponseError:  # no stream or group: nothing to prune
        return []
    removed = []
    for info in consumers:  # type: ignore[union-attr]
        name = as_text(info["name"])
        if name == keep or int(info["pending"]) > 0 or int(info["idle"]) < idle_ms:
            continue
        if lua_script(_DELETE_IF_IDLE)(keys=[key], args=[keys.GROUP, name], client=client) == 0:
            removed.append(name)
    return removed
