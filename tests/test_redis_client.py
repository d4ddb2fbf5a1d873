"""The Redis helpers every module shares: one decoding rule, one way to run a Lua script."""

from __future__ import annotations

import uuid

import redis

from app.redis_client import as_text, get_redis, lua_script


def test_as_text_decodes_either_client_mode_and_never_raises() -> None:
    assert as_text(b"1700000000000-0") == as_text("1700000000000-0") == "1700000000000-0"
    assert as_text(b"caf\xc3\xa9") == "café"
    assert as_text(b"\xff\x00binary") == "\ufffd\x00binary"  # a malformed entry's field
    assert as_text(3) == "3"


def test_a_script_redis_never_saw_is_loaded_and_run(redis_client: redis.Redis) -> None:
    token = uuid.uuid4().hex  # a new text: its SHA is unknown to the server, so EVALSHA fails first
    script = lua_script(f"return {{'{token}', KEYS[1], ARGV[1]}}")
    assert script is lua_script(f"return {{'{token}', KEYS[1], ARGV[1]}}")  # registered once
    assert not redis_client.script_exists(script.sha)[0]
    for client in (redis_client, get_redis(decode_responses=False)):  # any client, either mode
        reply = script(keys=["k"], args=["a"], client=client)
        assert [as_text(x) for x in reply] == [token, "k", "a"]
    assert redis_client.script_exists(script.sha)[0]
