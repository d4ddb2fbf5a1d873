"""The stream envelope: what one entry of ``plugin:execution:<plugin>`` carries.

An entry has two fields: ``v`` (the message version, ``"1"``) and ``payload``
(a JSON object: ``run_id``, ``plugin``, ``user_id``, ``enqueued_at`` and
``attempt``, the last optional and 1 by default so the contract stays "at
least run_id, plugin, user_id, enqueued_at"). Unknown payload keys are ignored
so a v1 producer may add fields without breaking older consumers.

Guarantees: :func:`parse_entry` accepts anything a stream can hold (bytes or
str keys and values, binary garbage, megabytes) and returns either a valid
:class:`Envelope` or an :class:`EnvelopeRejection` with a :class:`Reason`
and a message naming the offending field; it never raises. The payload is
capped at :data:`MAX_PAYLOAD_BYTES` before it is decoded, so a huge entry
costs nothing to reject. The payload's fields are checked by pydantic against
the annotations of :class:`Envelope` (strict: ``true`` is not a user id, a
number is not a time).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from annotated_types import Ge
from pydantic import PlainValidator, Strict, StringConstraints, TypeAdapter, ValidationError

from app import keys
from app.plugins.names import PLUGIN_NAME_RE

#: The message version this code writes and reads.
VERSION = "1"
#: A real payload is ~150 bytes; anything near this cap is garbage or an attack.
MAX_PAYLOAD_BYTES = 8 * 1024


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


def _zoned_time(value: Any) -> datetime:
    # Python's own ISO 8601 reader, not pydantic's: pydantic would also take a Unix time.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if isinstance(value, str) and len(value) <= 64:
        parsed = datetime.fromisoformat(value)  # ValueError: reported as this field's error
        if parsed.tzinfo is not None:
            return parsed
    raise ValueError("not an ISO 8601 time with a zone")


#: The payload field types (what each field must be, and how the rejection says it).
PluginName = Annotated[str, Strict(), StringConstraints(pattern=PLUGIN_NAME_RE.pattern)]
PositiveInt = Annotated[int, Strict(), Ge(1)]
ZonedTime = Annotated[datetime, PlainValidator(_zoned_time)]
#: What each payload field must be, in the order problems are reported (the first one is).
_EXPECTED = {
    "run_id": "a UUID",
    "plugin": "a plugin name",
    "user_id": "a positive integer",
    "attempt": "a positive integer",
    "enqueued_at": "an ISO 8601 time with a zone",
}


@dataclass(frozen=True)
class Envelope:
    """A valid v1 entry: which run to execute and who asked for it.

    Built directly by the producer (trusted values, no validation cost); entries
    read back are validated against these annotations by :func:`parse_entry`.
    """

    run_id: uuid.UUID
    plugin: PluginName
    user_id: PositiveInt
    enqueued_at: ZonedTime
    attempt: PositiveInt = 1

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


_ENVELOPE: TypeAdapter[Envelope] = TypeAdapter(Envelope)
_RUN_ID: TypeAdapter[uuid.UUID] = TypeAdapter(uuid.UUID)


@dataclass(frozen=True)
class EnvelopeRejection:
    """Why an entry is not a valid envelope (a value, not an exception).

    ``run_id`` is set when it could still be read, so the run can be failed.
    """

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


def parse_entry(fields: Mapping[Any, Any] | None) -> Envelope | EnvelopeRejection:
    """Parse one entry's fields (bytes or str) into an :class:`Envelope`, or say what is wrong.

    Never raises: any input yields an ``Envelope`` or an ``EnvelopeRejection``.
    """
    try:
        return _parse(fields or {})
    except Exception as exc:  # a bug here must not crash the consumer: reject the entry instead
        return EnvelopeRejection(Reason.INVALID_PAYLOAD, f"unparseable entry: {type(exc).__name__}")


def _parse(fields: Mapping[Any, Any]) -> Envelope | EnvelopeRejection:
    version = _get(fields, keys.FIELD_VERSION)
    if version is None:
        return EnvelopeRejection(Reason.MISSING_FIELD, f"no {keys.FIELD_VERSION!r} field")
    if version not in (VERSION, VERSION.encode()):
        return EnvelopeRejection(Reason.UNKNOWN_VERSION, f"unknown message version {_short(version)}")
    raw = _get(fields, keys.FIELD_PAYLOAD)
    if raw is None:
        return EnvelopeRejection(Reason.MISSING_FIELD, f"no {keys.FIELD_PAYLOAD!r} field")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes | bytearray):
        return EnvelopeRejection(Reason.INVALID_PAYLOAD, f"payload is a {type(raw).__name__}, not bytes")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return EnvelopeRejection(Reason.TOO_LARGE, f"payload is {len(raw)} bytes (max {MAX_PAYLOAD_BYTES})")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return EnvelopeRejection(Reason.NOT_UTF8, "payload is not UTF-8 text")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return EnvelopeRejection(Reason.NOT_JSON, f"payload is not JSON: {str(exc)[:80]}")
    if not isinstance(data, dict):
        return EnvelopeRejection(
            Reason.INVALID_PAYLOAD, f"payload is a JSON {type(data).__name__}, not an object"
        )
    return _payload(data)


def _payload(data: dict[str, Any]) -> Envelope | EnvelopeRejection:
    try:
        return _ENVELOPE.validate_python(data)
    except ValidationError as exc:
        return _rejection(data, exc)


def _rejection(data: dict[str, Any], exc: ValidationError) -> EnvelopeRejection:
    """The first problem pydantic found, said in terms of the payload's fields."""
    problems = [(str(error["loc"][0]), error) for error in exc.errors(include_url=False) if error["loc"]]
    missing = [name for name, error in problems if error["type"] == "missing"]
    if missing:
        return EnvelopeRejection(Reason.MISSING_FIELD, f"payload has no {', '.join(missing)}")
    if not problems:  # not about one field (cannot happen for a dict): say what pydantic said
        return EnvelopeRejection(Reason.INVALID_PAYLOAD, f"invalid payload: {exc.errors()[0]['msg']}")
    order = list(_EXPECTED)
    name, error = min(
        problems, key=lambda problem: order.index(problem[0]) if problem[0] in order else len(order)
    )
    message = f"{name} {_short(error['input'])} is not {_EXPECTED.get(name, 'valid')}"
    if any(field == "run_id" for field, _ in problems):
        return EnvelopeRejection(Reason.INVALID_PAYLOAD, message)
    return EnvelopeRejection(Reason.INVALID_PAYLOAD, message, _RUN_ID.validate_python(data["run_id"]))
