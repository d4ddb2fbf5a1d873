"""The Python API: users, plugin configuration, runs and dead letters.

Every function opens and closes its own session and returns plain dataclasses;
no ORM object leaves this module. Errors are typed (:mod:`app.errors`):
unknown user/plugin/run -> :class:`NotFoundError`, disabled plugin ->
:class:`PluginDisabledError`, bad settings -> :class:`SettingsValidationError`
(validated *before* anything is saved), bad state -> :class:`RunStateError`.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import address, get_settings
from app.db import runs as run_states
from app.db.engine import session_scope
from app.db.models import (
    PluginRow,
    PluginRun,
    RunStatus,
    Trigger,
    User,
    UserPluginConfig,
    utcnow,
)
from app.errors import (
    FirstSipError,
    NotFoundError,
    NotPublishedError,
    PluginDisabledError,
    RunStateError,
)
from app.execution import attempts, cancel_watch
from app.plugins.jsonsafe import clip
from app.plugins.names import PLUGIN_NAME_RE
from app.plugins.settings import spec_from_row, validate_settings
from app.scheduling import ScheduleError, next_run_at, zone
from app.streams import producer
from app.streams.producer import RunRef

if TYPE_CHECKING:
    from app.streams.dlq import DeadLetter, ReplayResult


class AlreadyExistsError(FirstSipError):
    """A user with that email already exists."""


class WaitTimeoutError(FirstSipError):
    """A run did not reach a terminal state within the wait timeout."""


@dataclass(frozen=True)
class UserInfo:
    id: int
    email: str
    timezone: str


@dataclass(frozen=True)
class ConfigInfo:
    user_id: int
    plugin: str
    settings: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None
    disabled_reason: str | None


@dataclass(frozen=True)
class RunInfo:
    run_id: uuid.UUID
    user_id: int
    plugin: str
    trigger: str
    status: RunStatus
    scheduled_for: datetime | None
    input: dict[str, Any]
    output: dict[str, Any] | None
    error_message: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    #: One entry per ended attempt (outcome, times, error, token usage), oldest first.
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    #: Token usage summed over every attempt, failed ones included.
    total_usage: dict[str, int] = field(default_factory=dict)

    @property
    def content(self) -> str | None:
        """The run's final content (the digest), if it completed."""
        return (self.output or {}).get("content")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = dict(self.__dict__)
        data["run_id"] = str(self.run_id)
        data["status"] = self.status.value
        return data


# ---- helpers ------------------------------------------------------------------------------


#: Ids are PostgreSQL ``integer``s: anything larger names nothing (and must not reach a query).
MAX_ID = 2**31 - 1
#: Column sizes the API checks before a statement could fail on them.
MAX_EMAIL = 320
MAX_IDEMPOTENCY_KEY = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _shown(value: str, limit: int = 80) -> str:
    return clip(repr(value), limit)


def _user(session: Session, user_id: int) -> User:
    if not 1 <= user_id <= MAX_ID:
        raise NotFoundError(f"no user with id {user_id}")
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    return user


def _plugin(session: Session, name: str) -> PluginRow:
    if not PLUGIN_NAME_RE.fullmatch(name):
        raise NotFoundError(f"no plugin named {_shown(name)}")
    row = session.scalars(select(PluginRow).where(PluginRow.name == name)).one_or_none()
    if row is None:
        raise NotFoundError(f"no plugin named {name!r} (run 'first-sip plugins sync'?)")
    if not row.enabled:
        raise PluginDisabledError(f"plugin {name!r} is disabled: {row.disabled_reason or 'by an operator'}")
    return row


def _run_info(run: PluginRun, plugin: str) -> RunInfo:
    return RunInfo(
        run_id=run.run_id,
        user_id=run.user_id,
        plugin=plugin,
        trigger=run.trigger,
        status=RunStatus(run.status),
        scheduled_for=run.scheduled_for,
        input=dict(run.input or {}),
        output=run.output,
        error_message=run.error_message,
        attempts=run.attempts,
        created_at=run.created_at,
        started_at=run.started_at,
        completed_at=run.completed_at,
        attempt_log=list(run.attempt_log or []),
        total_usage=attempts.totals(run.attempt_log),
    )


def _parse_run_id(run_id: uuid.UUID | str) -> uuid.UUID:
    try:
        return run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError as exc:
        raise NotFoundError(f"{_shown(str(run_id))} is not a run id (expected a UUID)") from exc


def _config_info(config: UserPluginConfig, plugin: str) -> ConfigInfo:
    return ConfigInfo(
        config.user_id,
        plugin,
        dict(config.settings),
        config.enabled,
        config.next_run_at,
        config.disabled_reason,
    )


def schedule_next(
    plugin: PluginRow, settings: dict[str, Any], timezone: str, *, now: datetime
) -> datetime | None:
    """When a config of ``plugin`` with ``settings`` is next due, or None if never scheduled."""
    if "scheduled" not in (plugin.capabilities or []):
        return None
    return next_run_at(validate_settings(spec_from_row(plugin), settings), timezone, after=now)


# ---- users --------------------------------------------------------------------------------


def create_user(email: str, timezone: str = "UTC") -> UserInfo:
    """Create a user; the time zone must be an IANA name. Emails are unique (case-insensitive)."""
    email = email.strip().lower()
    local, _, domain = email.rpartition("@")
    if not local or not domain or len(email) > MAX_EMAIL or _CONTROL.search(email):
        raise ValueError(f"not an email address: {_shown(email)}")
    try:
        zone(timezone)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from exc
    try:
        with session_scope() as session:
            user = User(email=email, timezone=timezone)
            session.add(user)
            session.flush()
            return UserInfo(user.id, user.email, user.timezone)
    except IntegrityError as exc:
        raise AlreadyExistsError(f"a user with email {email!r} already exists") from exc


def get_user(user_id: int) -> UserInfo:
    """The user ``user_id``."""
    with session_scope() as session:
        user = _user(session, user_id)
        return UserInfo(user.id, user.email, user.timezone)


def find_user(email_or_id: str) -> UserInfo:
    """A user by numeric id or email (CLI convenience)."""
    if re.fullmatch(r"[0-9]{1,30}", email_or_id):
        return get_user(int(email_or_id))
    email = email_or_id.strip().lower()
    if len(email) > MAX_EMAIL or _CONTROL.search(email):
        raise NotFoundError(f"no user with email {_shown(email_or_id)}")
    with session_scope() as session:
        user = session.scalars(select(User).where(User.email == email)).one_or_none()
        if user is None:
            raise NotFoundError(f"no user with email {_shown(email_or_id)}")
        return UserInfo(user.id, user.email, user.timezone)


def set_timezone(user_id: int, timezone: str) -> UserInfo:
    """Change a user's time zone and recompute the next run of each of their enabled configs."""
    zone(timezone)  # ScheduleError is a ValueError: bad input
    now = utcnow()
    with session_scope() as session:
        user = _user(session, user_id)
        user.timezone = timezone
        rows = session.execute(
            select(UserPluginConfig, PluginRow)
            .join(PluginRow, PluginRow.id == UserPluginConfig.plugin_id)
            .where(UserPluginConfig.user_id == user_id, UserPluginConfig.enabled)
        )
        for config, plugin in rows:
            config.next_run_at = schedule_next(plugin, dict(config.settings), timezone, now=now)
        return UserInfo(user.id, user.email, user.timezone)


# ---- configuration ------------------------------------------------------------------------


def configure_plugin(
    user_id: int,
    plugin: str,
    settings: dict[str, Any] | None = None,
    *,
    enabled: bool | None = None,
    unset: Iterable[str] = (),
    replace: bool = False,
) -> ConfigInfo:
    """Change a user's configuration of ``plugin``; what is not named is kept.

    * ``settings`` are merged into the stored settings, key by key (top level:
      a key's new value replaces its old value whole); ``unset`` removes keys so
      they fall back to the plugin's defaults. With ``replace=True`` the stored
      settings become exactly ``settings`` (``{}``/None: every default).
    * ``enabled`` None leaves the flag as it is (a first configuration is
      enabled); True/False sets it and nothing else changes.
    * The resulting settings are validated *before* anything is saved: on
      :class:`SettingsValidationError` (every error, with its path) the stored
      row is untouched. Enabled configs get their ``next_run_at`` recomputed.
    """
    unset = list(unset)
    if replace and unset:
        raise ValueError("unset cannot be combined with replace (replace already drops every key)")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a JSON object, got {type(settings).__name__}")
    both = sorted(set(unset) & set(settings or {}))
    if both:
        raise ValueError(f"key(s) both set and unset: {', '.join(map(repr, both))}")
    now = utcnow()
    with session_scope() as session:
        user = _user(session, user_id)
        row = _plugin(session, plugin)
        config = session.scalars(
            select(UserPluginConfig).where(
                UserPluginConfig.user_id == user_id, UserPluginConfig.plugin_id == row.id
            )
        ).one_or_none()
        stored = {} if config is None or replace else dict(config.settings or {})
        merged = {k: v for k, v in {**stored, **(settings or {})}.items() if k not in unset}
        validate_settings(spec_from_row(row), merged)
        if config is None:
            config = UserPluginConfig(user_id=user_id, plugin_id=row.id, enabled=True)
            session.add(config)
        config.settings = merged
        config.plugin_version = row.version
        config.schema_fingerprint = row.schema_fingerprint
        if enabled is not None:
            config.enabled = enabled
        if config.enabled:
            config.disabled_reason = None
        config.next_run_at = schedule_next(row, merged, user.timezone, now=now) if config.enabled else None
        session.flush()
        return _config_info(config, row.name)


def replace_config(
    user_id: int, plugin: str, settings: dict[str, Any] | None, *, enabled: bool | None = None
) -> ConfigInfo:
    """Store exactly ``settings`` (validated first), dropping every key not in it."""
    return configure_plugin(user_id, plugin, settings, enabled=enabled, replace=True)


def set_enabled(user_id: int, plugin: str, enabled: bool) -> ConfigInfo:
    """Enable or disable a user's plugin; the settings are kept as they are."""
    return configure_plugin(user_id, plugin, None, enabled=enabled)


def get_config(user_id: int, plugin: str) -> ConfigInfo:
    """The user's configuration of ``plugin``."""
    if not PLUGIN_NAME_RE.fullmatch(plugin) or not 1 <= user_id <= MAX_ID:
        raise NotFoundError(f"user {user_id} has not configured plugin {_shown(plugin)}")
    with session_scope() as session:
        row = session.scalars(select(PluginRow).where(PluginRow.name == plugin)).one_or_none()
        config = None
        if row is not None:
            config = session.scalars(
                select(UserPluginConfig).where(
                    UserPluginConfig.user_id == user_id, UserPluginConfig.plugin_id == row.id
                )
            ).one_or_none()
        if row is None or config is None:
            raise NotFoundError(f"user {user_id} has not configured plugin {plugin!r}")
        return _config_info(config, row.name)


# ---- runs ---------------------------------------------------------------------------------


def trigger_run(
    user_id: int,
    plugin: str,
    settings: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> RunInfo:
    """Create a manual run and publish it at once; returns the run as of its publish (``queued``).

    The run's input is the user's saved settings overlaid with ``settings``,
    validated. The same ``idempotency_key`` (per user) returns the same run,
    unpublished again. One transaction creates the row, then one publish
    writes its stream entry and marks it queued: the row is committed before
    any message names it. A run saved but not published raises
    :class:`NotPublishedError` (the outbox sweep publishes it later).
    """
    if idempotency_key is not None and (
        not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY or _CONTROL.search(idempotency_key)
    ):
        raise ValueError(
            f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} printable characters "
            f"(got {len(idempotency_key)} characters)"
        )
    now = utcnow()
    with session_scope() as session:
        info, ref = _create_manual_run(
            session,
            user_id=user_id,
            plugin=plugin,
            settings=settings,
            idempotency_key=idempotency_key,
            now=now,
        )
    if ref is None:
        return info  # the run this idempotency key already named
    try:
        with session_scope() as session:
            published = producer.publish_runs(session, [ref], now=now)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        where = address(get_settings().redis_url)
        raise NotPublishedError(
            f"run {ref.run_id} was saved but not published: Redis at {where} does not answer; the "
            "scheduler's outbox sweep publishes it once Redis is back",
            run_id=ref.run_id,
        ) from exc
    if not published:  # the stream refused the entry (see the producer's log)
        raise NotPublishedError(
            f"run {ref.run_id} was saved but not published: Redis refused plugin {plugin!r}'s stream (see "
            "'first-sip status'); it stays pending and the outbox sweep retries it",
            run_id=ref.run_id,
        )
    return dataclasses.replace(info, status=RunStatus.QUEUED)


def _run_by_key(session: Session, user_id: int, idempotency_key: str) -> PluginRun | None:
    return session.scalars(
        select(PluginRun).where(PluginRun.user_id == user_id, PluginRun.idempotency_key == idempotency_key)
    ).one_or_none()


def _create_manual_run(
    session: Session,
    *,
    user_id: int,
    plugin: str,
    settings: dict[str, Any] | None,
    idempotency_key: str | None,
    now: datetime,
) -> tuple[RunInfo, RunRef | None]:
    """The new pending run and its reference, or (the run this key already named, None)."""
    _user(session, user_id)
    row = _plugin(session, plugin)
    name = row.name
    if idempotency_key is not None:
        existing = _run_by_key(session, user_id, idempotency_key)
        if existing is not None:
            return _run_info(existing, name), None
    saved = session.scalars(
        select(UserPluginConfig.settings).where(
            UserPluginConfig.user_id == user_id, UserPluginConfig.plugin_id == row.id
        )
    ).one_or_none()
    effective = validate_settings(spec_from_row(row), {**(saved or {}), **(settings or {})})
    run = PluginRun(
        run_id=uuid.uuid4(),
        user_id=user_id,
        plugin_id=row.id,
        trigger=Trigger.MANUAL,
        status=RunStatus.PENDING,
        input=effective,
        idempotency_key=idempotency_key,
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent call with the same key won the insert (PostgreSQL made this one wait for
        # its commit, so its row is visible now): return that run, in this same session.
        session.rollback()
        existing = _run_by_key(session, user_id, idempotency_key) if idempotency_key is not None else None
        if existing is None:
            raise
        return _run_info(existing, name), None
    # The reference the publish needs, built here as the scheduler builds its own: no re-read.
    return _run_info(run, name), RunRef(run.run_id, name, user_id)


def get_run(run_id: uuid.UUID | str) -> RunInfo:
    """The run ``run_id``."""
    rid = _parse_run_id(run_id)
    with session_scope() as session:
        found = session.execute(
            select(PluginRun, PluginRow.name)
            .join(PluginRow, PluginRow.id == PluginRun.plugin_id)
            .where(PluginRun.run_id == rid)
        ).one_or_none()
        if found is None:
            raise NotFoundError(f"no run {rid}")
        return _run_info(found[0], found[1])


def wait_for_run(
    run_id: uuid.UUID | str,
    timeout: float = 300.0,
    *,
    poll: float = 0.05,
    on_progress: Callable[[RunInfo], object] | None = None,
) -> RunInfo:
    """Block until the run is terminal and return it; raises :class:`WaitTimeoutError`.

    Polls from every ``poll`` seconds, slowing to once a second; ``on_progress``
    (a spinner, say) is called with every state read, the terminal one included.
    """
    deadline = time.monotonic() + timeout
    delay = poll
    while True:
        info = get_run(run_id)
        if on_progress is not None:
            on_progress(info)
        if info.status.is_terminal:
            return info
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"run {info.run_id} still {info.status.value} after {timeout:.0f}s")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)


def list_runs(
    *,
    user_id: int | None = None,
    plugin: str | None = None,
    status: RunStatus | str | None = None,
    limit: int = 50,
    before: datetime | None = None,
) -> list[RunInfo]:
    """Runs, newest first, filtered; page with ``before`` = the last ``created_at`` seen."""
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    if status is not None:
        try:
            status = RunStatus(status)
        except ValueError as exc:
            raise ValueError(
                f"unknown status {status!r}; one of {', '.join(s.value for s in RunStatus)}"
            ) from exc
    stmt = select(PluginRun, PluginRow.name).join(PluginRow, PluginRow.id == PluginRun.plugin_id)
    if user_id is not None:
        stmt = stmt.where(PluginRun.user_id == user_id)
    if plugin is not None:
        if not PLUGIN_NAME_RE.fullmatch(plugin):
            return []
        stmt = stmt.where(PluginRow.name == plugin)
    if status is not None:
        stmt = stmt.where(PluginRun.status == status)
    if before is not None:
        stmt = stmt.where(PluginRun.created_at < before)
    stmt = stmt.order_by(PluginRun.created_at.desc(), PluginRun.id.desc()).limit(limit)
    with session_scope() as session:
        return [_run_info(run, name) for run, name in session.execute(stmt)]


def cancel_run(run_id: uuid.UUID | str) -> RunInfo:
    """Cancel a run that has not ended; a running one's crew stops at once (announced through Redis).

    If Redis is unreachable the cancel still holds and the worker stops at its next heartbeat.
    """
    rid = _parse_run_id(run_id)
    with session_scope() as session:
        if not run_states.cancel(session, rid, now=utcnow(), reason="cancelled by request"):
            current = session.scalar(select(PluginRun.status).where(PluginRun.run_id == rid))
            if current is None:
                raise NotFoundError(f"no run {rid}")
            raise RunStateError(f"run {rid} is already {current}; only unfinished runs can be cancelled")
    # After the commit: the worker running it stops its crew now, not at its next heartbeat.
    cancel_watch.announce(str(rid))
    return get_run(rid)


# ---- dead letters -------------------------------------------------------------------------


def dead_letters(plugin: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
    """Dead-lettered stream entries (all plugins, or one), newest first, with their reasons."""
    from app.streams import dlq

    return dlq.list_dead_letters(plugin, limit=limit)


def replay_dead_letter(ref: str, *, include_failed: bool = False) -> ReplayResult:
    """A fresh attempt of a dead letter's run (``<plugin>/<entry id>``): run reset, new entry published.

    A run that failed for another reason than this dead letter is replayed only
    with ``include_failed=True``; completed, cancelled and running runs never
    are. The replaced status and error are kept in the run's ``replays``.
    """
    from app.streams import dlq

    return dlq.replay(ref, include_failed=include_failed)
