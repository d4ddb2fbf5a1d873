"""Provider failures classified from what CrewAI's real OpenAI provider raises, in-process.

Each case makes one real request to the test server and classifies the
exception the provider raised; the worker-level behaviour is in test_provider.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from app.execution import runtime
from app.execution.llm import make_llm
from app.execution.outcome import classify_failure, is_transient
from app.execution.provider_errors import mask_keys, retry_after_of
from tests.llm_server import LLMServer, Reply

MODEL = "openai/gpt-4o-mini"
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer() as llm_server:
        yield llm_server


@pytest.fixture
def llm(server: LLMServer, setenv: Any) -> Any:
    server.reset()
    setenv(**server.env(api_key=KEY), FIRST_SIP_LLM_MAX_RETRIES="0", FIRST_SIP_LLM_TIMEOUT_SECONDS="1")
    runtime.prepare()
    return make_llm()


def _raised(llm: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        llm.call("hello")
    return info.value


@pytest.mark.parametrize(
    ("reply", "transient", "summary"),
    [
        (
            Reply(status=429, retry_after=7),
            True,
            "HTTP 429 rate limited, Retry-After 7 s: Rate limit reached",
        ),
        (Reply(status=408), True, "HTTP 408 request timeout"),
        (Reply(status=500), True, "HTTP 500 server error"),
        (Reply(status=502), True, "HTTP 502 server error"),
        (Reply(status=503), True, "HTTP 503 server error"),
        (Reply(hang=True, hang_seconds=5), True, "no answer within the request timeout (APITimeoutError)"),
        (Reply(malformed=True), True, "malformed response: JSONDecodeError"),
        (Reply(truncated=True), True, "truncated response: RemoteProtocolError"),
        (Reply(status=400), False, "HTTP 400 bad request"),
        (Reply(status=401), False, "HTTP 401 authentication failed (check the API key): Incorrect API key"),
        (Reply(status=403), False, "HTTP 403 permission denied"),
        (
            Reply(status=404),
            False,
            "HTTP 404 not found (unknown model or endpoint?): The model `gpt-4o-mini`",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_provider_failures_are_classified_with_model_host_and_status(
    llm: Any, server: LLMServer, reply: Reply, transient: bool, summary: str
) -> None:
    server.enqueue(reply)
    exc = _raised(llm)
    failure = classify_failure(exc, model=MODEL)
    assert failure.transient is transient, failure.message
    assert is_transient(exc) is transient
    assert failure.message.startswith(f"LLM provider error ({MODEL}"), failure.message
    assert summary in failure.message
    assert KEY not in failure.message and KEY[-4:] not in failure.message
    assert server.count() == 1  # max_retries=0 and CrewAI's own loops off: exactly one request
    server.release()
    server.rehang()


def test_retry_after_is_read_from_the_provider_answer(llm: Any, server: LLMServer) -> None:
    server.enqueue(Reply(status=429, retry_after=12))
    assert classify_failure(_raised(llm), model=MODEL).retry_after == 12
    server.enqueue(Reply(status=503))
    assert classify_failure(_raised(llm), model=MODEL).retry_after is None


def test_a_connection_refused_is_transient(setenv: Any) -> None:
    setenv(
        FIRST_SIP_LLM_MODEL=MODEL,
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        OPENAI_API_KEY=KEY,
        FIRST_SIP_LLM_MAX_RETRIES="0",
    )
    runtime.prepare()
    failure = classify_failure(_raised(make_llm()), model=MODEL)
    assert failure.transient
    assert failure.message.startswith(f"LLM provider error ({MODEL} via 127.0.0.1): connection failed")


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class _HTTPError(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("rate limited")
        self.response = _Response(headers)


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_of(_HTTPError({"retry-after": "30"})) == 30
    assert retry_after_of(_HTTPError({"retry-after": "1.5"})) == 1.5
    assert retry_after_of(_HTTPError({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_of(_HTTPError({"retry-after": date}), now=now) == 90
    assert retry_after_of(_HTTPError({"retry-after": "soon"})) is None
    assert retry_after_of(_HTTPError({"retry-after": "-3"})) is None
    assert retry_after_of(_HTTPError({})) is None


def test_key_shaped_text_is_masked() -> None:
    text = "Incorrect API key provided: sk-proj-****************wxyz; Authorization: Bearer abc.def"
    masked = mask_keys(text)
    assert "wxyz" not in masked and "abc.def" not in masked
    assert masked.startswith("Incorrect API key provided: <redacted>")


def test_a_decode_error_outside_the_provider_stays_permanent() -> None:
    import json

    try:
        json.loads("{not json")
    except ValueError as exc:
        failure = classify_failure(exc, model=MODEL)
    assert not failure.transient
    assert failure.message.startswith("JSONDecodeError: ")
