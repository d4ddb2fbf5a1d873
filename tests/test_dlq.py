"""Dead letters: the atomic move, list, replay (one, all, refused), purge, and the CLI over them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from app import keys
from app.cli import cli
from app.db import runs
from app.db.models import RunStatus
from app.redis_client import get_redis
from app.streams import dlq, heartbeat
from app.streams.envelope import Reason
from app.streams.errors import AmbiguousDeadLetterError, DeadLetterNotFoundError, NotReplayableError
from app.streams.groups import ensure_group
from tests.streams_support import add_plugin, pending, publish, run_row, set_run

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _bury(plugin: str, run_id: uuid.UUID | None = None, *, reason: Reason = Reason.MAX_DELIVERIES) -> str:
    """Read the plugin's next entry as consumer "c1" and dead-letter it; returns the dead letter's ref."""
    client = get_redis(decode_responses=False)
    ensure_group(client, plugin)
    reply: Any = client.xreadgroup(keys.GROUP, "c1", {keys.stream(plugin): ">"}, count=1)
    ((_key, [(entry_id, fields)]),) = reply
    dead_id = dlq.move_to_dead_letters(
        client,
        plugin=plugin,
        entry_id=entry_id.decode(),
        fields=fields,
        reason=reason,
        message="test",
        delivery_count=6,
        consumer="c1",
        now=NOW,
    )
    if run_id is not None:  # what the consumer records on the run when it dead-letters its entry
        set_run(run_id, status=RunStatus.FAILED, error_message=runs.dead_letter_error(reason, "test"))
    return f"{plugin}/{dead_id}"


def test_move_is_atomic_and_keeps_the_original(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    (run_id,) = publish("alpha", 1)
    entry_id = run_row(run_id).stream_id
    ref = _bury("alpha", run_id)
    assert pending(redis_client, "alpha") == {}
    letter = dlq.get_dead_letter(ref)
    assert letter.original_id == entry_id and letter.reason == Reason.MAX_DELIVERIES
    assert letter.delivery_count == 6 and letter.run_id == run_id and letter.dead_at == NOW
    assert letter.fields["v"] == "1" and json.loads(letter.fields["payload"])["run_id"] == str(run_id)


def test_list_and_lookup(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    add_plugin("beta")
    a1, a2 = publish("alpha", 2)
    (b1,) = publish("beta", 1)
    refs = [_bury("alpha", a1), _bury("alpha", a2), _bury("beta", b1)]
    assert [d.ref for d in dlq.list_dead_letters()] == [refs[1], refs[0], refs[2]]  # newest first per plugin
    assert [d.run_id for d in dlq.list_dead_letters("beta")] == [b1]
    assert dlq.get_dead_letter(refs[2].split("/")[1]).ref == refs[2]  # a bare id, unique
    with pytest.raises(DeadLetterNotFoundError):
        dlq.get_dead_letter("alpha/1-1")
    redis_client.xadd(keys.dead_letters("alpha"), {"x": "1"}, id="9999999999999-0")
    redis_client.xadd(keys.dead_letters("beta"), {"x": "1"}, id="9999999999999-0")
    with pytest.raises(AmbiguousDeadLetterError):
        dlq.get_dead_letter("9999999999999-0")


def test_replay_gives_the_run_a_fresh_entry(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    (run_id,) = publish("alpha", 1)
    old_entry = run_row(run_id).stream_id
    set_run(run_id, attempts=3)
    ref = _bury("alpha", run_id)
    result = dlq.replay(ref, now=NOW)
    assert result.replayed and result.run_id == run_id
    row = run_row(run_id)
    assert row.status == RunStatus.QUEUED and row.error_message is None and row.completed_at is None
    assert row.stream_id == result.new_entry_id != old_entry and row.attempts == 3  # the fence only grows
    assert redis_client.xlen(keys.dead_letters("alpha")) == 0
    entries: Any = redis_client.xrange(keys.stream("alpha"), result.new_entry_id or "-", "+")
    (_entry_id, fields), *_ = entries
    assert json.loads(fields["payload"])["attempt"] == 4


def test_replay_refuses_what_must_not_run_again(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    done, running = publish("alpha", 2)
    refs = [_bury("alpha", done), _bury("alpha", running)]
    set_run(done, status=RunStatus.COMPLETED)
    set_run(running, status=RunStatus.PROCESSING, lease_expires_at=datetime.now(UTC) + timedelta(hours=1))
    redis_client.xadd(keys.stream("alpha"), {"v": "1", "payload": "garbage"})
    refs.append(_bury("alpha", reason=Reason.NOT_JSON))
    for ref in refs:
        with pytest.raises(NotReplayableError):
            dlq.replay(ref)
    assert redis_client.xlen(keys.dead_letters("alpha")) == 3  # all kept
    assert run_row(done).status == RunStatus.COMPLETED


def test_replay_all(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    a, b, c = publish("alpha", 3)
    for run_id in (a, b, c):
        _bury("alpha", run_id)
    set_run(c, status=RunStatus.CANCELLED)
    results = dlq.replay_all(now=NOW)
    assert [(r.run_id, r.replayed) for r in results] == [(a, True), (b, True), (c, False)]
    assert [d.run_id for d in dlq.list_dead_letters("alpha")] == [c]


def test_purge_older_than(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    old = int((datetime.now(UTC) - timedelta(days=10)).timestamp() * 1000)
    redis_client.xadd(keys.dead_letters("alpha"), {"v": "1"}, id=f"{old}-0")
    redis_client.xadd(keys.dead_letters("alpha"), {"v": "1"}, id=f"{old}-1")
    (run_id,) = publish("alpha", 1)
    _bury("alpha", run_id)
    purged = dlq.purge(timedelta(days=7))
    assert purged.removed["alpha"] == 2 and purged.total == 2
    assert [d.run_id for d in dlq.list_dead_letters("alpha")] == [run_id]


def test_cli(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    a, b = publish("alpha", 2)
    ref_a, _ref_b = _bury("alpha", a), _bury("alpha", b)
    listed = runner.invoke(cli, ["dlq", "list", "alpha", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {d["ref"] for d in json.loads(listed.stdout)} == {ref_a, _ref_b}
    assert runner.invoke(cli, ["dlq", "replay"]).exit_code == 2
    replayed = runner.invoke(cli, ["dlq", "replay", ref_a])
    assert replayed.exit_code == 0 and f"run {a} replayed" in replayed.output
    assert runner.invoke(cli, ["dlq", "replay", ref_a]).exit_code == 1  # gone now
    assert runner.invoke(cli, ["dlq", "replay", "--all"]).exit_code == 0
    assert run_row(b).status == RunStatus.QUEUED
    assert runner.invoke(cli, ["dlq", "purge", "--older-than", "soon"]).exit_code == 2
    purged = runner.invoke(cli, ["dlq", "purge", "--older-than", "7d"])
    assert purged.exit_code == 0 and "removed 0 dead letter(s)" in purged.output


def test_consumer_check_exit_codes(redis_client: redis.Redis) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["consumer", "--check"]).exit_code == 1
    heartbeat.beat("c1")
    checked = runner.invoke(cli, ["consumer", "--check"])
    assert checked.exit_code == 0 and "alive: c1" in checked.output
    heartbeat.release("someone-else")  # not the holder: the key stays
    assert runner.invoke(cli, ["consumer", "--check"]).exit_code == 0
    heartbeat.release("c1")
    assert runner.invoke(cli, ["consumer", "--check"]).exit_code == 1
