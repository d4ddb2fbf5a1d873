"""The Python API: every call and every error path, against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text, update

from app import api, keys
from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, RunStatus, UserPluginConfig
from app.errors import (
    NotFoundError,
    NotPublishedError,
    PluginDisabledError,
    RunStateError,
    SettingsValidationError,
)
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import unique_email


@pytest.fixture
def plugins(db, redis_client, make_plugin):  # type: ignore[no-untyped-def]
    make_plugin("api-plugin")
    make_plugin("off-plugin")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
        session.execute(update(PluginRow).where(PluginRow.name == "off-plugin").values(enabled=False))
    return make_plugin


@pytest.fixture
def user(plugins):  # type: ignore[no-untyped-def]
    return api.create_user(unique_email(), "Europe/Berlin")


# ---- users ----


def test_create_and_find_user(plugins) -> None:  # type: ignore[no-untyped-def]
    email = unique_email()
    created = api.create_user(email.upper(), "America/New_York")
    assert created.email == email and created.timezone == "America/New_York"
    assert api.get_user(created.id) == created
    assert api.find_user(email) == created and api.find_user(str(created.id)) == created


@pytest.mark.parametrize(
    "email, tz, error, fragment",
    [
        ("not-an-email", "UTC", ValueError, "not an email"),
        ("a@b.c", "Mars/Base", ValueError, "unknown time zone 'Mars/Base'"),
    ],
)
def test_create_user_rejects_bad_input(plugins, email, tz, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        api.create_user(email, tz)


def test_duplicate_email(plugins) -> None:  # type: ignore[no-untyped-def]
    email = unique_email()
    api.create_user(email)
    with pytest.raises(api.AlreadyExistsError, match="already exists"):
        api.create_user(email)


def test_unknown_user(plugins) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="no user with id 999999"):
        api.get_user(999999)
    with pytest.raises(NotFoundError, match="no user with email"):
        api.find_user("nobody@example.com")


# ---- configure ----


def test_configure_validates_then_saves_and_schedules(user) -> None:  # type: ignore[no-untyped-def]
    info = api.configure_plugin(user.id, "api-plugin", {"preferred_time": "07:15", "topics": ["sports"]})
    assert info.enabled and info.settings == {"preferred_time": "07:15", "topics": ["sports"]}
    assert info.next_run_at is not None
    local = info.next_run_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (7, 15)


def test_configure_reports_every_error_and_keeps_what_was_stored(user) -> None:  # type: ignore[no-untyped-def]
    api.configure_plugin(user.id, "api-plugin", {"topics": ["sports"]})
    with pytest.raises(SettingsValidationError) as exc:
        api.configure_plugin(user.id, "api-plugin", {"topics": [], "preferred_time": "9am", "colour": 1})
    assert {e.path for e in exc.value.errors} == {"", "/topics", "/preferred_time"}
    assert api.get_config(user.id, "api-plugin").settings == {"topics": ["sports"]}


def test_disable_clears_schedule_and_enable_recomputes(user) -> None:  # type: ignore[no-untyped-def]
    assert api.configure_plugin(user.id, "api-plugin", {}, enabled=False).next_run_at is None
    assert api.configure_plugin(user.id, "api-plugin", {}, enabled=True).next_run_at is not None


def test_timezone_change_recomputes_next_run(user) -> None:  # type: ignore[no-untyped-def]
    before = api.configure_plugin(user.id, "api-plugin", {"preferred_time": "06:00"}).next_run_at
    api.set_timezone(user.id, "Asia/Tokyo")
    after = api.get_config(user.id, "api-plugin").next_run_at
    assert before is not None and after is not None and before != after
    local = after.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (6, 0)


@pytest.mark.parametrize(
    "plugin, error, fragment",
    [
        ("missing-plugin", NotFoundError, "no plugin named 'missing-plugin'"),
        ("off-plugin", PluginDisabledError, "plugin 'off-plugin' is disabled"),
    ],
)
def test_configure_unknown_or_disabled_plugin(user, plugin, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        api.configure_plugin(user.id, plugin, {})


def test_configure_unknown_user(plugins) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError):
        api.configure_plugin(424242, "api-plugin", {})


def test_get_config_missing(user) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="has not configured"):
        api.get_config(user.id, "api-plugin")


# ---- runs ----


def test_trigger_run_publishes_at_once(user, redis_client) -> None:  # type: ignore[no-untyped-def]
    api.configure_plugin(user.id, "api-plugin", {"topics": ["sports"]})
    run = api.trigger_run(user.id, "api-plugin", {"preferred_time": "08:00"})
    assert run.status == RunStatus.QUEUED and run.trigger == "manual"
    assert run.input["topics"] == ["sports"] and run.input["preferred_time"] == "08:00"
    (entry,) = redis_client.xrange(keys.stream("api-plugin"))
    payload = json.loads(entry[1][keys.FIELD_PAYLOAD])
    assert payload["run_id"] == str(run.run_id) and payload["user_id"] == user.id


def test_trigger_with_idempotency_key_returns_same_run(user, redis_client) -> None:  # type: ignore[no-untyped-def]
    first = api.trigger_run(user.id, "api-plugin", idempotency_key="k-1")
    again = api.trigger_run(user.id, "api-plugin", idempotency_key="k-1")
    other = api.trigger_run(user.id, "api-plugin", idempotency_key="k-2")
    assert first.run_id == again.run_id != other.run_id
    assert redis_client.xlen(keys.stream("api-plugin")) == 2


def test_trigger_loses_an_idempotency_race_to_the_winners_run(user, redis_client) -> None:  # type: ignore[no-untyped-def]
    """A concurrent trigger with the same key waits for the winner's commit, then returns its run."""
    with session_scope() as session:
        plugin_id = session.scalars(select(PluginRow.id).where(PluginRow.name == "api-plugin")).one()
    winner = uuid.uuid4()
    result: dict[str, object] = {}
    with session_scope() as held:  # the winner: inserted, not yet committed
        held.add(
            PluginRun(run_id=winner, user_id=user.id, plugin_id=plugin_id, input={}, idempotency_key="race")
        )
        held.flush()
        loser = threading.Thread(
            target=lambda: result.update(run=api.trigger_run(user.id, "api-plugin", idempotency_key="race"))
        )
        loser.start()
        # The loser's insert now waits on the unique index for the winner's transaction.
        while not held.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
            loser.join(0.05)
            assert loser.is_alive(), result
    loser.join(30)
    run = result["run"]
    assert isinstance(run, api.RunInfo) and run.run_id == winner and run.status == RunStatus.PENDING
    assert redis_client.xlen(keys.stream("api-plugin")) == 0  # the winner publishes its own run


def test_trigger_refused_by_the_stream_keeps_the_run_pending(user, redis_client) -> None:  # type: ignore[no-untyped-def]
    redis_client.set(keys.stream("api-plugin"), "not a stream")  # every XADD to it is WRONGTYPE
    with pytest.raises(NotPublishedError, match="refused plugin 'api-plugin'") as exc:
        api.trigger_run(user.id, "api-plugin")
    assert (
        api.get_run(str(exc.value.run_id)).status == RunStatus.PENDING
    )  # the outbox sweep publishes it later


def test_trigger_validates_overrides(user) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsValidationError) as exc:
        api.trigger_run(user.id, "api-plugin", {"topics": ["cooking"]})
    assert exc.value.errors[0].path == "/topics/0"
    assert api.list_runs(user_id=user.id) == []  # nothing stored


@pytest.mark.parametrize(
    "plugin, error", [("missing-plugin", NotFoundError), ("off-plugin", PluginDisabledError)]
)
def test_trigger_unknown_or_disabled_plugin(user, plugin, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        api.trigger_run(user.id, plugin)


def test_trigger_unknown_user(plugins) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError):
        api.trigger_run(31337, "api-plugin")


def test_get_run_errors(plugins) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="not a run id"):
        api.get_run("nope")
    with pytest.raises(NotFoundError, match="no run"):
        api.get_run(uuid.uuid4())


def test_list_runs_filters_and_pages(user) -> None:  # type: ignore[no-untyped-def]
    other = api.create_user(unique_email())
    runs = [api.trigger_run(user.id, "api-plugin") for _ in range(5)]
    api.trigger_run(other.id, "api-plugin")
    mine = api.list_runs(user_id=user.id)
    assert [r.run_id for r in mine] == [r.run_id for r in reversed(runs)]
    page = api.list_runs(user_id=user.id, limit=2)
    rest = api.list_runs(user_id=user.id, before=page[-1].created_at, limit=10)
    assert len(page) == 2 and {r.run_id for r in page} | {r.run_id for r in rest} >= {
        r.run_id for r in runs[:-2]
    }
    assert api.list_runs(plugin="api-plugin", status="queued", limit=100)
    assert api.list_runs(status=RunStatus.COMPLETED) == []
    with pytest.raises(ValueError, match="unknown status 'done'"):
        api.list_runs(status="done")
    with pytest.raises(ValueError, match="limit"):
        api.list_runs(limit=0)


def test_cancel_run_and_errors(user) -> None:  # type: ignore[no-untyped-def]
    run = api.trigger_run(user.id, "api-plugin")
    cancelled = api.cancel_run(run.run_id)
    assert cancelled.status == RunStatus.CANCELLED and cancelled.status.is_terminal
    with pytest.raises(RunStateError, match="already cancelled"):
        api.cancel_run(run.run_id)
    with pytest.raises(NotFoundError):
        api.cancel_run(uuid.uuid4())


def test_wait_for_run_returns_terminal_and_times_out(user) -> None:  # type: ignore[no-untyped-def]
    run = api.trigger_run(user.id, "api-plugin")
    seen: list[api.RunInfo] = []
    with pytest.raises(api.WaitTimeoutError, match="still queued"):
        api.wait_for_run(run.run_id, timeout=0.3, on_progress=seen.append)
    assert seen and {info.status for info in seen} == {RunStatus.QUEUED}
    with session_scope() as session:
        session.execute(
            update(PluginRun)
            .where(PluginRun.run_id == run.run_id)
            .values(status=RunStatus.COMPLETED, output={"content": "# hi"}, completed_at=datetime.now(UTC))
        )
    done = api.wait_for_run(run.run_id, timeout=5, on_progress=seen.append)
    assert done.status == RunStatus.COMPLETED and done.content == "# hi"
    assert seen[-1] == done  # the progress callback sees the terminal state too


def _only_times(value: object) -> str:
    """The one conversion the CLI's JSON output needs; anything else is not plain data."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON data: {value!r}")


def test_run_rows_hold_no_orm_objects(user) -> None:  # type: ignore[no-untyped-def]
    run = api.trigger_run(user.id, "api-plugin")
    # No default=str: a UUID, a Decimal or an ORM object anywhere in the dict fails here.
    doc = json.loads(json.dumps(run.as_dict(), default=_only_times))
    assert doc["run_id"] == str(run.run_id) and doc["status"] == "queued" and doc["plugin"] == "api-plugin"
    assert datetime.fromisoformat(doc["created_at"]) == run.created_at


def test_schema_evolution_at_sync(user, plugins) -> None:  # type: ignore[no-untyped-def]
    """A new plugin version whose schema rejects saved settings: migrated or disabled."""
    from tests.conftest import VALID_SCHEMA

    keep = api.create_user(unique_email())
    api.configure_plugin(user.id, "api-plugin", {"topics": ["sports"]})
    api.configure_plugin(keep.id, "api-plugin", {"topics": ["science"]})
    narrower = json.loads(json.dumps(VALID_SCHEMA))
    narrower["properties"]["topics"]["items"]["enum"] = ["technology", "science"]
    plugins("api-plugin", version="2.0.0", schema=narrower)
    with session_scope() as session:
        report = sync_plugins(session, discover(plugins.root))
    assert report.updated == ["api-plugin"]
    assert report.configs.disabled == [f"api-plugin:{user.id}"]
    assert report.configs.revalidated == [f"api-plugin:{keep.id}"]
    info = api.get_config(user.id, "api-plugin")
    assert not info.enabled and "'sports' is not one of" in (info.disabled_reason or "")
    assert info.settings == {"topics": ["sports"]}  # kept, not rewritten

    # Version 3 ships a migrator: sports -> science. Re-enabling is the user's call; the
    # migrator applies to configs that are enabled and stale.
    api.configure_plugin(keep.id, "api-plugin", {"topics": ["science"]})
    with session_scope() as session:
        session.execute(
            update(UserPluginConfig)
            .where(UserPluginConfig.user_id == keep.id)
            .values(settings={"topics": ["sports"]}, schema_fingerprint="old", plugin_version="1.0.0")
        )
    folder = plugins(
        "api-plugin", version="3.0.0", schema=narrower, settings_migrator="crew/migrate.py:migrate"
    )
    (folder / "crew" / "migrate.py").write_text(
        "def migrate(settings, from_version):\n"
        "    assert from_version == '1.0.0'\n"
        "    return {**settings, 'topics': ['science' if t == 'sports' else t for t in settings['topics']]}\n"
    )
    with session_scope() as session:
        report = sync_plugins(session, discover(plugins.root))
    assert report.configs.migrated == [f"api-plugin:{keep.id}"]
    migrated = api.get_config(keep.id, "api-plugin")
    assert migrated.enabled and migrated.settings == {"topics": ["science"]} and migrated.next_run_at
    with session_scope() as session:
        row = session.scalars(select(UserPluginConfig).where(UserPluginConfig.user_id == keep.id)).one()
        assert row.plugin_version == "3.0.0"


def test_dead_letters_list_and_replay(user, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.db import runs as run_states
    from app.streams.dlq import move_to_dead_letters
    from app.streams.envelope import Reason

    assert api.dead_letters() == []
    run = api.trigger_run(user.id, "api-plugin")
    client = __import__("app.redis_client", fromlist=["get_redis"]).get_redis(decode_responses=False)
    client.xgroup_create(keys.stream("api-plugin"), keys.GROUP, id="0", mkstream=True)
    ((_, entries),) = client.xreadgroup(keys.GROUP, "t", {keys.stream("api-plugin"): ">"})
    entry_id, fields = entries[0]
    now = datetime.now(UTC)
    move_to_dead_letters(
        client,
        plugin="api-plugin",
        entry_id=entry_id.decode(),
        fields=fields,
        reason=Reason.MAX_DELIVERIES,
        message="delivered 6 times",
        delivery_count=6,
        consumer="t",
        now=now,
    )
    with session_scope() as session:
        error = run_states.dead_letter_error(Reason.MAX_DELIVERIES, "delivered 6 times")
        run_states.fail_unless_terminal(session, run.run_id, error=error, now=now)
    (letter,) = api.dead_letters()
    assert letter.plugin == "api-plugin" and letter.run_id == run.run_id and letter.delivery_count == 6
    assert api.dead_letters("api-plugin") == [letter]

    result = api.replay_dead_letter(letter.ref)
    assert result.replayed and result.run_id == run.run_id and result.new_entry_id
    replayed = api.get_run(run.run_id)
    assert replayed.status == RunStatus.QUEUED
    assert api.dead_letters() == []
    with pytest.raises(NotFoundError):
        api.replay_dead_letter(letter.ref)
