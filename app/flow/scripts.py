"""The Lua scripts of flow control: each touches one hash slot and reads Redis's clock.

Why scripts and not a library: the slot check-and-take must be atomic across
consumers (count, then add only while under the cap), and the budget check
must see the pause key and the request log together. One short script each
does that in one round trip, keeps every key under our prefix (named in
:mod:`app.keys`). ``limits``' moving window would do the budget alone, but
not the pause or the consumer's read-only peek.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from app.redis_client import lua_script

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS[1] in-flight set; ARGV cap, lease ms, members... (``<run id>:<attempt>``, see slots.member).
#: Drops expired slots, then takes one per member while under the cap. One slot per run:
#: the member already there keeps it (its expiry is extended, never shortened); a later
#: attempt of the same run takes over an earlier attempt's slot (no second slot); a member
#: of an earlier attempt than the one holding the run's slot is granted without a slot (a
#: stale redelivery: its worker finds nothing to run). Cap 0 is a worker's claim or lease
#: renewal: no cap, and the expiry is set to the lease (not kept longer), so a dead worker's
#: slot ends with its lease. Returns {runs in flight, granted members...}.
ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[1])
local expiry = now + tonumber(ARGV[2])
local function split(member)
  local run, attempt = string.match(member, '^(.*):(%d+)$')
  if run then return run, tonumber(attempt) end
  return member, 0
end
local held = {}
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do
  local run, attempt = split(member)
  held[run] = {member, attempt}
end
local count = #members
local out = {0}
for i = 3, #ARGV do
  local id = ARGV[i]
  local run, attempt = split(id)
  local current = held[run]
  if current and current[2] > attempt then
    out[#out + 1] = id
  elseif current and current[1] == id then
    if cap == 0 then
      redis.call('ZADD', KEYS[1], expiry, id)
    else
      redis.call('ZADD', KEYS[1], 'GT', expiry, id)
    end
    out[#out + 1] = id
  elseif current then
    redis.call('ZREM', KEYS[1], current[1])
    redis.call('ZADD', KEYS[1], expiry, id)
    held[run] = {id, attempt}
    out[#out + 1] = id
  elseif cap == 0 or count < cap then
    redis.call('ZADD', KEYS[1], expiry, id)
    count = count + 1
    held[run] = {id, attempt}
    out[#out + 1] = id
  end
end
out[1] = count
local ttl = redis.call('PTTL', KEYS[1])
if ttl ~= -2 and ttl < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return out
"""
)

#: KEYS[1] in-flight set. Returns the number of unexpired slots.
COUNT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

#: KEYS[1] request log, KEYS[2] pause key; ARGV limit (0: none), window ms, member ('' peeks).
#: Returns {granted 0/1, ms to wait, requests in the window, pause ms left}. A peek never adds.
TAKE = (
    _NOW
    + """
local pause = redis.call('PTTL', KEYS[2])
if pause < 0 then pause = 0 end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local used = 0
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  used = redis.call('ZCARD', KEYS[1])
end
if pause > 0 then return {0, pause, used, pause} end
if limit > 0 and used >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + window - now + 1
  if wait < 1 then wait = 1 end
  return {0, wait, used, 0}
end
if ARGV[3] == '' then return {1, 0, used, 0} end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  used = used + 1
end
return {1, 0, used, 0}
"""
)

#: KEYS[1] pause key; ARGV ms. Extends the pause to ms from now, never shortens it.
#: Returns the pause's ms left.
PAUSE = """
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left < want then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', want)
  return want
end
return left
"""


#: One scripted call: (script text, keys, args).
Call = tuple[str, Sequence[str], Sequence[Any]]


def _noscript(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def eval_all(
    client: Any, calls: Sequence[Call], *, also: Sequence[tuple[str, tuple[Any, ...]]] = ()
) -> list[Any]:
    """Run ``calls`` in one pipelined round trip; each reply is a value or the exception it raised.

    EVALSHA directly (redis-py's pipelined scripts add a SCRIPT EXISTS round trip to every
    execute); on NOSCRIPT (a restarted or flushed Redis) the scripts are loaded and only the
    calls that did not run are sent again. ``also``: plain commands ``(name, args)`` sent in
    the same round trip, their replies after the scripts'.
    """
    with client.pipeline(transaction=False) as pipe:
        for text, keys, args in calls:
            pipe.evalsha(script(text).sha, len(keys), *keys, *args)
        for name, args in also:
            pipe.execute_command(name, *args)
        answers = pipe.execute(raise_on_error=False)
    replies, extra = answers[: len(calls)], answers[len(calls) :]
    todo = [i for i, reply in enumerate(replies) if _noscript(reply)]
    if todo:
        for text in {calls[i][0] for i in todo}:
            client.script_load(text)
        with client.pipeline(transaction=False) as pipe:
            for i in todo:
                text, keys, args = calls[i]
                pipe.evalsha(script(text).sha, len(keys), *keys, *args)
            for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
    return list(replies) + list(extra)


def script(text: str) -> Script:
    """The registered :class:`Script` for ``text`` (EVALSHA, loaded on NOSCRIPT; pipelines load it first)."""
    return lua_script(text)
