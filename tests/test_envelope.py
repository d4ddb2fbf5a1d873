"""The stream envelope: round trip, every rejection reason, and property tests (any input, no exception).

Malformed entries are ordinary input here: each must come back as an
:class:`EnvelopeRejection` with a reason and a message naming what is wrong.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streams.envelope import MAX_PAYLOAD_BYTES, Envelope, EnvelopeRejection, Reason, parse_entry

RUN = uuid.UUID("6f1c8a52-3c1e-4d0c-9f59-2b8f0f4b8a11")
WHEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _payload(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": str(RUN),
        "plugin": "daily-news",
        "user_id": 7,
        "attempt": 2,
        "enqueued_at": WHEN.isoformat(),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _fields(payload: Any, v: Any = "1") -> dict[bytes, bytes]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {b"v": v.encode() if isinstance(v, str) else v, b"payload": raw}


def test_round_trip_bytes_and_str() -> None:
    envelope = Envelope(RUN, "daily-news", 7, WHEN, 2)
    fields = envelope.to_fields()
    assert parse_entry(fields) == envelope
    assert parse_entry({k.encode(): v.encode() for k, v in fields.items()}) == envelope


def test_attempt_is_optional_and_extra_keys_are_ignored() -> None:
    parsed = parse_entry(_fields(_payload(attempt=None, trace="abc")))
    assert isinstance(parsed, Envelope) and parsed.attempt == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, Reason.MISSING_FIELD),
        ({b"payload": b"{}"}, Reason.MISSING_FIELD),
        ({b"v": b"1"}, Reason.MISSING_FIELD),
        (_fields(_payload(), v="2"), Reason.UNKNOWN_VERSION),
        (_fields(_payload(), v=b"\xff\x00"), Reason.UNKNOWN_VERSION),
        (_fields(b"not json at all"), Reason.NOT_JSON),
        (_fields(b"[" * 5000), Reason.NOT_JSON),
        (_fields(b"\xff\xfe\x00binary"), Reason.NOT_UTF8),
        (_fields(b"x" * (MAX_PAYLOAD_BYTES + 1)), Reason.TOO_LARGE),
        (_fields([1, 2]), Reason.INVALID_PAYLOAD),
        (_fields(_payload(run_id=None)), Reason.MISSING_FIELD),
        (_fields(_payload(enqueued_at=None)), Reason.MISSING_FIELD),
        (_fields(_payload(run_id="nope")), Reason.INVALID_PAYLOAD),
        (_fields(_payload(run_id=12)), Reason.INVALID_PAYLOAD),
        (_fields(_payload(plugin="Bad Name")), Reason.INVALID_PAYLOAD),
        (_fields(_payload(user_id=True)), Reason.INVALID_PAYLOAD),
        (_fields(_payload(user_id="7")), Reason.INVALID_PAYLOAD),
        (_fields(_payload(attempt=0)), Reason.INVALID_PAYLOAD),
        (_fields(_payload(enqueued_at="2026-06-01T12:00:00")), Reason.INVALID_PAYLOAD),
        (_fields(_payload(enqueued_at=1717243200)), Reason.INVALID_PAYLOAD),
    ],
)
def test_rejections_name_the_reason(fields: dict[bytes, bytes], reason: Reason) -> None:
    parsed = parse_entry(fields)
    assert isinstance(parsed, EnvelopeRejection), parsed
    assert parsed.reason == reason and parsed.message


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_payload(run_id="nope"), "run_id 'nope' is not a UUID"),
        (_payload(run_id=None, user_id=None), "payload has no run_id, user_id"),
        (_payload(plugin="Bad Name"), "plugin 'Bad Name' is not a plugin name"),
        (_payload(plugin="daily-news\n"), "plugin 'daily-news\\n' is not a plugin name"),
        (_payload(plugin="a" * 64), f"plugin '{'a' * 56}... is not a plugin name"),  # values clipped
        (_payload(plugin=["daily-news"]), "plugin ['daily-news'] is not a plugin name"),
        (_payload(user_id=True), "user_id True is not a positive integer"),
        (_payload(user_id=7.0), "user_id 7.0 is not a positive integer"),
        (_payload(user_id=0), "user_id 0 is not a positive integer"),
        (_payload(attempt=False), "attempt False is not a positive integer"),
        (_payload(enqueued_at="1717243200"), "enqueued_at '1717243200' is not an ISO 8601 time with a zone"),
        (_payload(enqueued_at="2026-06-01T12:00:00"), "is not an ISO 8601 time with a zone"),
        (_payload(enqueued_at="x" * 65), "is not an ISO 8601 time with a zone"),
        # Several problems: the first in field order is the one reported.
        (_payload(user_id=-1, attempt=0, enqueued_at=3), "user_id -1 is not a positive integer"),
        (_payload(attempt=0, enqueued_at=3), "attempt 0 is not a positive integer"),
    ],
)
def test_rejections_name_the_field_and_the_value(payload: dict[str, Any], message: str) -> None:
    parsed = parse_entry(_fields(payload))
    assert isinstance(parsed, EnvelopeRejection), parsed
    assert message in parsed.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"enqueued_at": "2026-06-01T12:00:00Z"},
        {"enqueued_at": "2026-06-01 12:00:00+00:00"},
        {"enqueued_at": "2026-06-01T14:00:00.123456+02:00"},
        {"run_id": RUN.hex},
        {"run_id": str(RUN).upper()},
        {"user_id": 2**62, "attempt": 10_000},
        {"plugin": "a" * 63},
    ],
)
def test_other_valid_spellings_are_accepted(overrides: dict[str, Any]) -> None:
    parsed = parse_entry(_fields(_payload(**overrides)))
    assert isinstance(parsed, Envelope), parsed
    assert parsed.run_id == RUN or "run_id" not in overrides


def test_run_id_is_kept_when_the_rest_is_invalid() -> None:
    parsed = parse_entry(_fields(_payload(user_id=-1)))
    assert isinstance(parsed, EnvelopeRejection) and parsed.run_id == RUN
    parsed = parse_entry(_fields(_payload(run_id="nope", user_id=-1)))
    assert isinstance(parsed, EnvelopeRejection) and parsed.run_id is None


def test_huge_payload_is_rejected_before_decoding() -> None:
    parsed = parse_entry({b"v": b"1", b"payload": b"\xff" * (50 * 1024 * 1024)})
    assert isinstance(parsed, EnvelopeRejection) and parsed.reason == Reason.TOO_LARGE


# ---- properties -------------------------------------------------------------------------------

_any_value = st.one_of(st.binary(max_size=300), st.text(max_size=300), st.integers(), st.none())


@given(st.dictionaries(st.one_of(st.binary(max_size=10), st.text(max_size=10)), _any_value, max_size=6))
@settings(max_examples=400, deadline=None)
def test_any_fields_give_a_typed_result(fields: dict[Any, Any]) -> None:
    parsed = parse_entry(fields)
    assert isinstance(parsed, Envelope | EnvelopeRejection)
    if isinstance(parsed, EnvelopeRejection):
        assert isinstance(parsed.reason, Reason) and parsed.message


@given(st.binary(max_size=MAX_PAYLOAD_BYTES + 64), st.sampled_from([b"1", b"2", b"", b"\xff"]))
@settings(max_examples=400, deadline=None)
def test_any_payload_bytes_give_a_typed_result(payload: bytes, version: bytes) -> None:
    parsed = parse_entry({b"v": version, b"payload": payload})
    assert isinstance(parsed, Envelope | EnvelopeRejection)
    if version != b"1":
        assert isinstance(parsed, EnvelopeRejection) and parsed.reason == Reason.UNKNOWN_VERSION


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "run_id": st.one_of(st.uuids().map(str), _json),
            "plugin": st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z"), _json),
            "user_id": st.one_of(st.integers(), _json),
            "attempt": st.one_of(st.integers(), _json),
            "enqueued_at": st.one_of(st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat), _json),
        },
    )
)
@settings(max_examples=400, deadline=None)
def test_any_json_object_gives_a_typed_result(payload: dict[str, Any]) -> None:
    parsed = parse_entry({"v": "1", "payload": json.dumps(payload)})
    assert isinstance(parsed, Envelope | EnvelopeRejection)


@given(
    st.uuids(),
    st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,62}\Z"),
    st.integers(min_value=1, max_value=2**62),
    st.integers(min_value=1, max_value=1000),
    st.datetimes(timezones=st.just(UTC)),
)
@settings(max_examples=200, deadline=None)
def test_valid_envelopes_round_trip(
    run_id: uuid.UUID, plugin: str, user_id: int, attempt: int, when: datetime
) -> None:
    envelope = Envelope(run_id, plugin, user_id, when, attempt)
    assert parse_entry(envelope.to_fields()) == envelope
