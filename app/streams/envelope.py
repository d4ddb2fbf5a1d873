"""The stream envelope: what one entry of ``plugin:execution:<plugin>`` carries.

An entry has two fields: ``v`` (the message version, ``"1"``) and ``payload``
(a JSON object: ``run_id``, ``plugin``, ``user_id``, ``enqueued_at`` and
``attempt``, the last optional and 1 by default so the contract stays "at
least run_id, plugin, user_id, enqueued_at"). Unknown payload keys are ignored
so a v1 producer may add fields without breaking older consumers.

Guarantees: :func:`parse_entry` accepts anything a stream can hold (bytes or
str keys and values, binary garbage, megabytes) and returns either a valid
:class:`Envelope` or an :class:`EnvelopeError` with a :class:`Reason`; it
never raises. The payload is capped at :data:`MAX_PAYLOAD_BYTES` before it is
decoded, so a huge entry costs nothing to reject.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from app import keys
from app.plugins.names import PLUGIN_NAME_RE

#: The message version this code writes and reads.
VERSION = "1"
#: A real payload is ~200 bytes; anything near this cap is garbage or an attack.
MAX_PAYLOAD_BYTES = 8 * 1024
_REQUIRED = ("run_id", "plugin", "user_id", "enqueued_at")


class Reason(StrEnum):
    """Why an entry went to the dead letters. The first six come from :func:`parse_entry`."""

    MISSING_FIELD = "missing_field"
    UNKNOWN_VERSION = "unknown_version"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    INVALID_PAYLOAD = "invalid_payload"
    #: The envelope names another plugin than the stream it was read from.
    WRONG_STREAM = "wrong_stream"
    #: No run row has the envelope's run id.
    RUN_NOT_FOUND = "run_not_found"
    #: Delivered more than ``max_deliveries`` times without its run ending.
    MAX_DELIVERIES = "max_deliveries"


@dataclass(frozen=True)
class Envelope:
    """A valid v1 entry: which run to execute and who asked for it."""

    run_id: uuid.UUID
    plugin: str
    user_id: int
    enqueued_at: datetime
    attempt: int = 1

    def to_fields(self) -> dict[str, str]:
        """The stream entry fields for this envelope (what XADD writes)."""
        payload = {
            "run_id": str(self.run_id),
            "plugin": self.plugin,
            "user_id": self.user_id,
            "attempt": self.attempt,
            "enqueued_at": self.enqueued_at.isoformat(),
        }
        return {
            keys.FIELD_VERSION: VERSION,
            keys.FIELD_PAYLOAD: json.dumps(payload, separators=(",", ":")),
        }


@dataclass(frozen=True)
class EnvelopeError:
    """Why an entry is not a valid envelope; ``run_id`` is set when it could still be read."""

    reason: Reason
    message: str
    run_id: uuid.UUID | None = None


def _get(fields: Mapping[Any, Any], name: str) -> Any:
    if name in fields:
        return fields[name]
    return fields.get(name.encode())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_entry(fields: Mapping[Any, Any] | None) -> Envelope | EnvelopeError:
    """Parse one entry's fields (bytes or str) into an :class:`Envelope`, or say what is wrong.

    Never raises: any input yields an ``Envelope`` or an ``EnvelopeError``.
    """
    try:
        return _parse(fields or {})
    except Exception as exc:  # a bug here must not crash the consumer: reject the entry instead
        return EnvelopeError(Reason.INVALID_PAYLOAD, f"unparseable entry: {type(exc).__name__}")


def _parse(fields: Mapping[Any, Any]) -> Envelope | EnvelopeError:
    version = _get(fields, keys.FIELD_VERSION)
    if version is None:
        return EnvelopeError(Reason.MISSING_FIELD, f"no {keys.FIELD_VERSION!r} field")
    if version not in (VERSION, VERSION.encode()):
        return EnvelopeError(Reason.UNKNOWN_VERSION, f"unknown message version {_short(version)}")
    raw = _get(fields, keys.FIELD_PAYLOAD)
    if raw is None:
        return EnvelopeError(Reason.MISSING_FIELD, f"no {keys.FIELD_PAYLOAD!r} field")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes | bytearray):
        return EnvelopeError(Reason.INVALID_PAYLOAD, f"payload is a {type(raw).__name__}, not bytes")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return EnvelopeError(Reason.TOO_LARGE, f"payload is {len(raw)} bytes (max {MAX_PAYLOAD_BYTES})")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return EnvelopeError(Reason.NOT_UTF8, "payload is not UTF-8 text")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return EnvelopeError(Reason.NOT_JSON, f"payload is not JSON: {str(exc)[:80]}")
    if not isinstance(data, dict):
        return EnvelopeError(
            Reason.INVALID_PAYLOAD, f"payload is a JSON {type(data).__name__}, not an object"
        )
    return _payload(data)


def _payload(data: dict[str, Any]) -> Envelope | EnvelopeError:
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        return EnvelopeError(Reason.MISSING_FIELD, f"payload has no {', '.join(missing)}")
    try:
        run_id = uuid.UUID(data["run_id"]) if isinstance(data["run_id"], str) else None
    except ValueError:
        run_id = None
    if run_id is None:
        return EnvelopeError(Reason.INVALID_PAYLOAD, f"run_id {_short(data['run_id'])} is not a UUID")

    def bad(message: str) -> EnvelopeError:
        return EnvelopeError(Reason.INVALID_PAYLOAD, message, run_id)

    plugin, user_id, attempt = data["plugin"], data["user_id"], data.get("attempt", 1)
    if not isinstance(plugin, str) or not PLUGIN_NAME_RE.fullmatch(plugin):
        return bad(f"plugin {_short(plugin)} is not a plugin name")
    if not _is_int(user_id) or user_id < 1:
        return bad(f"user_id {_short(user_id)} is not a positive integer")
    if not _is_int(attempt) or attempt < 1:
        return bad(f"attempt {_short(attempt)} is not a positive integer")
    enqueued_at = _timestamp(data["enqueued_at"])
    if enqueued_at is None:
        return bad(f"enqueued_at {_short(data['enqueued_at'])} is not an ISO 8601 time with a zone")
    return Envelope(run_id, plugin, user_id, enqueued_at, attempt)


def _is_int(value: Any) -> bool:
    # bool is an int subclass; ``true`` is not a user id.
    return isinstance(value, int) and not isinstance(value, bool)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
