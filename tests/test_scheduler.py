"""The beat tick on real PostgreSQL and SQLite (the embedded default) and Redis, with an injected clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app import api, keys
from app.beat_tick import _schedule_batch, schedule_due, tick
from app.db.engine import session_scope
from app.db.models import PluginRun, RunStatus, User, UserPluginConfig
from app.outbox import sweep
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import unique_email

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def plugin(on_both_databases, redis_client, make_plugin):  # type: ignore[no-untyped-def]
    make_plugin("sched-plugin")
    make_plugin("manual-only", capabilities=["manual"])
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    return "sched-plugin"


def _user_with_config(
    plugin: str, *, tz: str = "UTC", at: str = "06:00", next_run: datetime | None = T0
) -> int:
    user = api.create_user(unique_email(), tz)
    api.configure_plugin(user.id, plugin, {"preferred_time": at})
    if next_run is not None:
        _set_next_run(user.id, next_run)
    return user.id


def _set_next_run(user_id: int, when: datetime | None) -> None:
    with session_scope() as session:
        session.execute(
            update(UserPluginConfig).where(UserPluginConfig.user_id == user_id).values(next_run_at=when)
        )


def _runs(user_id: int | None = None) -> list[PluginRun]:
    with session_scope() as session:
        stmt = select(PluginRun).order_by(PluginRun.id)
        if user_id is not None:
            stmt = stmt.where(PluginRun.user_id == user_id)
        return list(session.scalars(stmt))


def _next_run(user_id: int) -> datetime | None:
    with session_scope() as session:
        return session.scalar(select(UserPluginConfig.next_run_at).where(UserPluginConfig.user_id == user_id))


def test_due_config_gets_one_run_published_and_advanced(plugin, redis_client) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    report = schedule_due(now=T0 + timedelta(minutes=1))
    assert report.created == 1 and report.published == 1
    (run,) = _runs(user_id)
    assert run.trigger == "schedule" and run.scheduled_for == T0
    assert run.status == RunStatus.QUEUED and run.stream_id
    assert run.input["preferred_time"] == "06:00" and run.input["topics"] == ["science"]
    assert _next_run(user_id) == T0 + timedelta(days=1)
    assert redis_client.xlen(keys.stream(plugin)) == 1
    # Nothing due any more: a second tick creates nothing.
    assert schedule_due(now=T0 + timedelta(minutes=2)).created == 0


def test_not_yet_due_is_left_alone(plugin) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin, next_run=T0 + timedelta(hours=1))
    assert schedule_due(now=T0).created == 0
    assert _runs(user_id) == []


def test_catch_up_after_three_days_gives_one_run(plugin) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    now = T0 + timedelta(days=3, minutes=30)
    report = schedule_due(now=now)
    assert report.created == 1 and report.coalesced == 3
    (run,) = _runs(user_id)
    assert run.scheduled_for == T0 + timedelta(days=3)  # the latest missed slot
    assert _next_run(user_id) == T0 + timedelta(days=4)


def test_slot_older_than_grace_is_skipped_and_counted(plugin, setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(CATCHUP_GRACE_SECONDS="3600")
    user_id = _user_with_config(plugin)
    report = schedule_due(now=T0 + timedelta(hours=5))
    assert report.created == 0 and report.skipped_stale == 1
    assert _runs(user_id) == []
    assert _next_run(user_id) == T0 + timedelta(days=1)


def test_batches_until_nothing_due(plugin) -> None:  # type: ignore[no-untyped-def]
    users = [_user_with_config(plugin) for _ in range(7)]
    report = schedule_due(now=T0 + timedelta(minutes=1), batch_size=3, threads=1)
    assert report.created == 7 and report.batches == 3
    assert {r.user_id for r in _runs()} == set(users)


def test_a_full_first_batch_continues_on_threads_each_config_once(plugin, redis_client) -> None:  # type: ignore[no-untyped-def]
    users = [_user_with_config(plugin) for _ in range(23)]
    late = _user_with_config(plugin, next_run=T0 - timedelta(days=2))  # coalesced, counted once
    report = schedule_due(now=T0 + timedelta(minutes=1), batch_size=5, threads=3)
    runs = _runs()
    assert report.created == report.published == len(runs) == 24
    assert {r.user_id for r in runs} == {*users, late}
    assert len({r.config_id for r in runs}) == 24 and report.coalesced == 2
    # PostgreSQL: SKIP LOCKED splits the work; SQLite: the tick keeps to one thread.
    assert report.batches >= 5 and report.duplicates == 0
    assert redis_client.xlen(keys.stream(plugin)) == 24
    assert all(_next_run(u) == T0 + timedelta(days=1) for u in [*users, late])


def test_unscheduled_plugin_never_scheduled(plugin) -> None:  # type: ignore[no-untyped-def]
    user = api.create_user(unique_email(), "UTC")
    info = api.configure_plugin(user.id, "manual-only", {})
    assert info.next_run_at is None
    _set_next_run(user.id, T0)  # even if something set it
    schedule_due(now=T0 + timedelta(minutes=1))
    assert _runs(user.id) == [] and _next_run(user.id) is None


def test_disabled_config_and_plugin_are_skipped(plugin) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    api.configure_plugin(user_id, plugin, {}, enabled=False)
    _set_next_run(user_id, T0)
    assert schedule_due(now=T0 + timedelta(minutes=1)).created == 0


def test_settings_failing_current_schema_disable_the_config(plugin) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    with session_scope() as session:  # as if saved under an older schema
        session.execute(
            update(UserPluginConfig)
            .where(UserPluginConfig.user_id == user_id)
            .values(settings={"topics": ["cooking"]}, schema_fingerprint="old")
        )
    report = schedule_due(now=T0 + timedelta(minutes=1))
    assert report.created == 0 and report.disabled == 1
    info = api.get_config(user_id, plugin)
    assert not info.enabled and "'cooking' is not one of" in (info.disabled_reason or "")


def test_two_concurrent_ticks_never_duplicate(plugin) -> None:  # type: ignore[no-untyped-def]
    users = [_user_with_config(plugin) for _ in range(40)]
    now = T0 + timedelta(minutes=1)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run_tick() -> None:
        try:
            barrier.wait()
            schedule_due(now=now, batch_size=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run_tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    runs = _runs()
    assert len(runs) == len(users) == len({(r.config_id, r.scheduled_for) for r in runs})


def test_same_slot_twice_is_a_no_op(plugin) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    schedule_due(now=T0 + timedelta(minutes=1))
    _set_next_run(user_id, T0)  # as if a stale beat had read the old next_run_at
    report = schedule_due(now=T0 + timedelta(minutes=1))
    assert report.created == 0 and report.duplicates == 1
    assert len(_runs(user_id)) == 1


def test_crash_between_commit_and_publish_recovered_by_sweep(plugin, redis_client, setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(OUTBOX_GRACE_SECONDS="60")
    user_id = _user_with_config(plugin)
    now = T0 + timedelta(minutes=1)
    from app.beat_tick import TickReport

    # The batch commits, then the process "dies" before publishing.
    handled, refs = _schedule_batch(now=now, limit=10, grace=timedelta(hours=6), report=TickReport())
    assert handled == 1 and len(refs) == 1
    (run,) = _runs(user_id)
    assert run.status == RunStatus.PENDING and redis_client.xlen(keys.stream(plugin)) == 0
    # Within the grace period the sweep leaves it (a live beat is about to publish).
    assert sweep(now=now + timedelta(seconds=30)) == 0
    # Past the grace period the next tick's sweep publishes it.
    assert tick(now=now + timedelta(minutes=5))["republished"] == 1
    (run,) = _runs(user_id)
    assert run.status == RunStatus.QUEUED and redis_client.xlen(keys.stream(plugin)) == 1


def test_sweep_republishes_lost_entries_and_due_retries(plugin, redis_client) -> None:  # type: ignore[no-untyped-def]
    user_id = _user_with_config(plugin)
    schedule_due(now=T0 + timedelta(minutes=1))
    redis_client.delete(keys.stream(plugin))  # Redis lost its data
    later = datetime.now(UTC) + timedelta(hours=1)
    assert sweep(now=later) == 1
    assert redis_client.xlen(keys.stream(plugin)) == 1
    # A retry waiting for its next_attempt_at is published only once that time has come.
    with session_scope() as session:
        session.execute(
            update(PluginRun)
            .where(PluginRun.user_id == user_id)
            .values(status=RunStatus.PENDING, next_attempt_at=later + timedelta(minutes=10), updated_at=later)
        )
    assert sweep(now=later + timedelta(minutes=5)) == 0
    assert sweep(now=later + timedelta(minutes=11)) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(PluginRun)) == 1


def test_sweep_pages_past_candidates_whose_entries_are_alive(plugin, redis_client) -> None:  # type: ignore[no-untyped-def]
    # Five queued runs waiting in a backlog, their entries alive; the last one's entry is lost.
    users = [_user_with_config(plugin) for _ in range(5)]
    schedule_due(now=T0 + timedelta(minutes=1))
    runs = _runs()
    assert [r.user_id for r in runs] == users and all(r.status == RunStatus.QUEUED for r in runs)
    redis_client.xdel(keys.stream(plugin), runs[-1].stream_id)
    later = datetime.now(UTC) + timedelta(hours=1)
    # Pages of two: the four live candidates fill two pages; the lost one is on the third.
    assert sweep(now=later, page_size=2) == 1
    assert redis_client.xlen(keys.stream(plugin)) == 5
    assert _runs(users[-1])[0].stream_id != runs[-1].stream_id


def test_each_schedule_gets_its_own_slots_in_one_batch(plugin) -> None:  # type: ignore[no-untyped-def]
    """Slots are computed once per schedule per tick: configs that differ in any part never share."""
    daily_utc = _user_with_config(plugin)
    berlin = _user_with_config(plugin, tz="Europe/Berlin", at="08:00")  # 06:00 UTC in May
    berlin_six = _user_with_config(plugin, tz="Europe/Berlin", at="06:00")  # same due time, other zone
    weekly = _user_with_config(plugin)
    api.configure_plugin(weekly, plugin, {"preferred_time": "06:00", "frequency": "weekly"})  # Mondays
    _set_next_run(weekly, T0)  # due now (a Friday), as if its weekday had just been changed
    late = _user_with_config(plugin, next_run=T0 - timedelta(days=1))
    report = schedule_due(now=T0 + timedelta(minutes=1), threads=1)
    assert report.created == 5 and report.coalesced == 1
    everyone = (daily_utc, berlin, berlin_six, weekly, late)
    assert {r.user_id: r.scheduled_for for r in _runs()} == {u: T0 for u in everyone}
    assert _next_run(berlin_six) == T0 + timedelta(hours=22)  # 06:00 in Berlin is 04:00 UTC
    assert _next_run(daily_utc) == _next_run(berlin) == _next_run(late) == T0 + timedelta(days=1)
    assert _next_run(weekly) == T0 + timedelta(days=3)  # Monday 2026-05-04


def test_an_impossible_schedule_disables_only_its_configs(plugin) -> None:  # type: ignore[no-untyped-def]
    good = _user_with_config(plugin)
    bad = [_user_with_config(plugin) for _ in range(2)]
    with session_scope() as session:  # as if the zone database lost a zone the users had
        session.execute(update(User).where(User.id.in_(bad)).values(timezone="Mars/Olympus_Mons"))
    report = schedule_due(now=T0 + timedelta(minutes=1), threads=1)
    assert report.created == 1 and report.disabled == 2
    assert [r.user_id for r in _runs()] == [good]
    for user_id in bad:
        info = api.get_config(user_id, plugin)
        assert not info.enabled and "unknown time zone 'Mars/Olympus_Mons'" in (info.disabled_reason or "")
