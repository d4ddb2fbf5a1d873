"""Dead letters: moving an entry there, and the tooling to list, replay and purge them.

A dead letter lives in ``plugin:execution:<plugin>:dead`` and carries the
original entry's fields unchanged plus ``dlq.original_id``, ``dlq.reason``
(a :class:`~app.streams.envelope.Reason`), ``dlq.message``,
``dlq.delivery_count`` (the group's delivery counter when it was moved),
``dlq.dead_at`` and ``dlq.consumer``.

Guarantees:

* :func:`move_to_dead_letters` adds the dead letter and XACKs the original in
  one MULTI, so an entry is never both pending and dead, nor neither.
* :func:`replay` gives the run a fresh attempt (``pending`` again with a fresh
  retry budget, then a new entry; the row decides, see
  :func:`app.db.runs.reset_for_replay`) and only then deletes the dead letter.
  A replay never rewrites history: a run that is missing, completed, cancelled,
  running, or failed for another reason than this dead letter is left exactly
  as it is and its dead letter kept and reported (``include_failed`` replays a
  failed run on purpose); the status and error a replay replaces are kept in
  the run's ``replays``.
* :func:`reconcile` (consumer start) fails the runs of dead letters that a
  killed consumer left non-terminal, so the outbox never republishes them.
* :func:`purge` removes dead letters older than a cutoff, exactly (not ``~``).

Dead-letter references are ``<plugin>/<entry id>``: entry ids are unique per
stream only. A bare id is accepted when exactly one plugin has it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select

from app import keys
from app.db import runs
from app.db.engine import session_scope
from app.db.models import PluginRow
from app.plugins.jsonsafe import clip
from app.plugins.names import PLUGIN_NAME_RE
from app.redis_client import as_text, get_redis
from app.streams.envelope import Reason, parse_entry
from app.streams.errors import AmbiguousDeadLetterError, DeadLetterNotFoundError, NotReplayableError
from app.streams.producer import load_refs, publish_runs

META = "dlq."
_CHUNK = 200


def move_to_dead_letters(
    client: redis.Redis,
    *,
    plugin: str,
    entry_id: str,
    fields: Mapping[Any, Any],
    reason: Reason,
    message: str,
    delivery_count: int,
    consumer: str,
    now: datetime,
) -> str:
    """Add the dead letter and XACK the original, atomically; returns the dead letter's id."""
    meta: dict[Any, Any] = {
        f"{META}original_id": entry_id,
        f"{META}reason": str(reason),
        f"{META}message": message[:1000],
        f"{META}delivery_count": str(delivery_count),
        f"{META}dead_at": now.isoformat(),
        f"{META}consumer": consumer,
    }
    original: dict[Any, Any] = {k: v for k, v in fields.items() if not as_text(k).startswith(META)}
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.dead_letters(plugin), {**original, **meta})
        pipe.xack(keys.stream(plugin), keys.GROUP, entry_id)
        dead_id, _ = pipe.execute()
    return as_text(dead_id)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, decoded for people and the API."""

    plugin: str
    id: str
    original_id: str
    reason: str
    message: str
    delivery_count: int
    dead_at: datetime | None
    run_id: uuid.UUID | None
    #: The original entry's fields (undecodable bytes shown with replacement characters).
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The unambiguous reference: ``<plugin>/<id>``."""
        return f"{self.plugin}/{self.id}"


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of replaying one dead letter."""

    ref: str
    run_id: uuid.UUID | None
    replayed: bool
    new_entry_id: str | None
    detail: str


@dataclass(frozen=True)
class PurgeResult:
    """Dead letters removed per plugin, and the cutoff used."""

    cutoff: datetime
    removed: dict[str, int]

    @property
    def total(self) -> int:
        """Dead letters removed across plugins."""
        return sum(self.removed.values())


def _decode(plugin: str, dead_id: Any, raw: Mapping[Any, Any]) -> DeadLetter:
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    original = {k: v for k, v in raw.items() if not as_text(k).startswith(META)}
    parsed = parse_entry(original)
    run_id = parsed.run_id
    try:
        dead_at: datetime | None = datetime.fromisoformat(fields.get(f"{META}dead_at", ""))
    except ValueError:
        dead_at = None
    count = fields.get(f"{META}delivery_count", "0")
    return DeadLetter(
        plugin=plugin,
        id=as_text(dead_id),
        original_id=fields.get(f"{META}original_id", ""),
        reason=fields.get(f"{META}reason", ""),
        message=fields.get(f"{META}message", ""),
        delivery_count=int(count) if count.isdigit() else 0,
        dead_at=dead_at,
        run_id=run_id,
        fields={k: v for k, v in fields.items() if not k.startswith(META)},
    )


def plugin_names() -> list[str]:
    """Every plugin the database knows (enabled or not): each may have dead letters."""
    with session_scope() as session:
        return sorted(session.scalars(select(PluginRow.name)))


def list_dead_letters(
    plugin: str | None = None, *, limit: int = 100, client: redis.Redis | None = None
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters per plugin (all plugins, or one), newest first."""
    client = client or get_redis(decode_responses=False)
    out: list[DeadLetter] = []
    for name in [plugin] if plugin else plugin_names():
        reply: Any = client.xrevrange(keys.dead_letters(name), count=limit)
        out.extend(_decode(name, dead_id, raw) for dead_id, raw in reply)
    return out


def _valid_ref(plugin: str, dead_id: str) -> bool:
    match = re.fullmatch(r"([0-9]{1,20})-([0-9]{1,20})", dead_id)
    if match is None or any(int(part) >= 2**64 for part in match.groups()):
        return False
    return not plugin or PLUGIN_NAME_RE.fullmatch(plugin) is not None


def get_dead_letter(ref: str, *, client: redis.Redis | None = None) -> DeadLetter:
    """The dead letter ``<plugin>/<id>`` (or a bare id unique across plugins)."""
    client = client or get_redis(decode_responses=False)
    plugin, _, dead_id = ref.rpartition("/")
    if not _valid_ref(plugin, dead_id):
        raise DeadLetterNotFoundError(
            f"no dead letter {clip(repr(ref), 80)}: a reference is <plugin>/<entry id>, "
            "e.g. daily-news-digest/1700000000000-0 (see 'first-sip dlq list')"
        )
    found: list[DeadLetter] = []
    for name in [plugin] if plugin else plugin_names():
        reply: Any = client.xrange(keys.dead_letters(name), dead_id, dead_id)
        found.extend(_decode(name, got_id, raw) for got_id, raw in reply)
    if not found:
        raise DeadLetterNotFoundError(f"no dead letter {ref!r}")
    if len(found) > 1:
        plugins = ", ".join(d.plugin for d in found)
        raise AmbiguousDeadLetterError(
            f"dead letter id {dead_id} exists in {plugins}: use <plugin>/{dead_id}"
        )
    return found[0]


def _replay_many(
    letters: list[DeadLetter], client: redis.Redis, now: datetime, *, include_failed: bool
) -> list[ReplayResult]:
    results: dict[str, ReplayResult] = {}
    with session_scope() as session:
        reset: dict[uuid.UUID, DeadLetter] = {}
        for letter in letters:
            if letter.run_id is None:
                results[letter.ref] = ReplayResult(letter.ref, None, False, None, "names no run")
                continue
            if letter.run_id in reset:
                continue
            refused = runs.reset_for_replay(
                session,
                letter.run_id,
                now=now,
                dead_letter_error=runs.dead_letter_error(letter.reason, letter.message),
                include_failed=include_failed,
            )
            if refused is None:
                reset[letter.run_id] = letter
            else:
                results[letter.ref] = ReplayResult(letter.ref, letter.run_id, False, None, refused)
        refs = load_refs(session, run_ids=list(reset))
        published = {p.run_id: p for p in publish_runs(session, refs, now=now, client=client)}
    # Only after the commit: a dead letter disappears once its run has its fresh entry.
    for letter in letters:
        if letter.ref in results or letter.run_id is None:
            continue
        entry = published.get(letter.run_id)
        client.xdel(keys.dead_letters(letter.plugin), letter.id)
        new_id = entry.stream_id if entry else None
        results[letter.ref] = ReplayResult(letter.ref, letter.run_id, True, new_id, "replayed")
    return [results[letter.ref] for letter in letters]


def replay(
    ref: str,
    *,
    include_failed: bool = False,
    now: datetime | None = None,
    client: redis.Redis | None = None,
) -> ReplayResult:
    """Replay one dead letter; raises :class:`NotReplayableError` if its run may not be replayed."""
    client = client or get_redis(decode_responses=False)
    letter = get_dead_letter(ref, client=client)
    result = _replay_many([letter], client, now or datetime.now(UTC), include_failed=include_failed)[0]
    if not result.replayed:
        raise NotReplayableError(f"dead letter {result.ref} not replayed: {result.detail}")
    return result


def replay_all(
    plugin: str | None = None,
    *,
    include_failed: bool = False,
    now: datetime | None = None,
    client: redis.Redis | None = None,
) -> list[ReplayResult]:
    """Replay every dead letter (of one plugin, or all); the ones that cannot be are reported, kept."""
    client = client or get_redis(decode_responses=False)
    now = now or datetime.now(UTC)
    results: list[ReplayResult] = []
    for name in [plugin] if plugin else plugin_names():
        start = "-"
        while True:
            chunk: Any = client.xrange(keys.dead_letters(name), start, "+", count=_CHUNK)
            if not chunk:
                break
            letters = [_decode(name, dead_id, raw) for dead_id, raw in chunk]
            results.extend(_replay_many(letters, client, now, include_failed=include_failed))
            start = "(" + letters[-1].id
    return results


def purge(
    older_than: timedelta,
    plugin: str | None = None,
    *,
    now: datetime | None = None,
    client: redis.Redis | None = None,
) -> PurgeResult:
    """Delete dead letters older than ``older_than`` (of one plugin, or all)."""
    client = client or get_redis(decode_responses=False)
    cutoff = (now or datetime.now(UTC)) - older_than
    min_id = f"{int(cutoff.timestamp() * 1000)}-0"
    removed = {}
    for name in [plugin] if plugin else plugin_names():
        removed[name] = int(client.xtrim(keys.dead_letters(name), minid=min_id, approximate=False))  # type: ignore[arg-type]
    return PurgeResult(cutoff, removed)


def reconcile(
    plugins: list[str], *, now: datetime, client: redis.Redis | None = None, page: int = _CHUNK
) -> int:
    """Fail the runs that dead letters name but a killed consumer left non-terminal; returns how many.

    A consumer moves an entry to the dead letters, then marks its run failed;
    killed in between, the run stays queued or processing and the outbox sweep
    would eventually publish it again. A run is failed here only if nothing
    happened to it since the dead letter was written (not replayed, not claimed
    again: its ``updated_at`` is not later than ``dead_at``) and, except for
    ``max_deliveries``, if its row still names the dead-lettered entry.
    """
    client = client or get_redis(decode_responses=False)
    failed = 0
    for name in plugins:
        start = "-"
        while True:
            chunk: Any = client.xrange(keys.dead_letters(name), start, "+", count=page)
            if not chunk:
                break
            letters = [_decode(name, dead_id, raw) for dead_id, raw in chunk]
            failed += _reconcile_page(letters, now)
            start = "(" + letters[-1].id
    return failed


def _reconcile_page(letters: list[DeadLetter], now: datetime) -> int:
    named = [d for d in letters if d.run_id is not None and d.dead_at is not None]
    if not named:
        return 0
    failed = 0
    with session_scope() as session:
        states = runs.states(session, [d.run_id for d in named if d.run_id is not None])
        for letter in named:
            state = states.get(letter.run_id) if letter.run_id else None
            if state is None or state.status.is_terminal or letter.dead_at is None:
                continue
            if state.updated_at is not None and state.updated_at > letter.dead_at:
                continue  # replayed or claimed since: the dead letter no longer speaks for it
            if letter.reason != Reason.MAX_DELIVERIES and state.stream_id != letter.original_id:
                continue
            error = runs.dead_letter_error(letter.reason, letter.message)
            if runs.fail_unless_terminal(session, state.run_id, error=error, now=now):
                failed += 1
    return failed
