"""The worker refuses to start with an LLM it cannot use; ``first-sip llm check`` tries the real thing.

Workers are real ``celery worker`` processes in production mode; ``llm check``
runs in-process against the test LLM server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.llm_server import LLMServer, Reply
from tests.processes import ManagedProcess, worker_args

PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "a-real-secret-value-for-the-test",
    "FLOWER_BASIC_AUTH": "admin:a-real-password",
}
KEY = "sk-test-startup-0123456789abcdef"


def _start_refused(env: dict[str, str]) -> str:
    process = ManagedProcess("worker-refused", worker_args(pool="prefork", concurrency=1), env=env)
    process.start()
    try:
        assert process.proc is not None
        code = process.proc.wait(timeout=120)
    finally:
        process.kill()
    assert code != 0, process.output[-3000:]
    return process.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FIRST_SIP_LLM_MODEL": "openai/gpt-4o-mini", "OPENAI_API_KEY": ""},
            "FIRST_SIP_LLM_MODEL=openai/gpt-4o-mini: OPENAI_API_KEY is not set: "
            "the openai provider needs it in the worker's environment",
        ),
        (
            {"FIRST_SIP_LLM_MODEL": "anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY": KEY},
            "FIRST_SIP_LLM_MODEL=anthropic/claude-3-5-haiku-latest: the anthropic provider's package is not "
            "installed in this worker; install crewai[anthropic]",
        ),
        (
            {"FIRST_SIP_LLM_MODEL": "openai/gtp-4o-mini", "OPENAI_API_KEY": KEY},
            "FIRST_SIP_LLM_MODEL=openai/gtp-4o-mini: CrewAI does not know the model 'gtp-4o-mini' "
            "of provider openai (misspelt?)",
        ),
        (
            {"FIRST_SIP_LLM_MODEL": "acme/fast-model", "OPENAI_API_KEY": KEY},
            "FIRST_SIP_LLM_MODEL=acme/fast-model: unknown provider 'acme'",
        ),
        (
            {"FIRST_SIP_LLM_MODEL": "gpt4", "OPENAI_API_KEY": KEY},
            "FIRST_SIP_LLM_MODEL=gpt4 names no provider: write it as <provider>/<model>",
        ),
    ],
    ids=["missing-key", "missing-package", "misspelt-model", "unknown-provider", "no-provider"],
)
def test_the_worker_refuses_to_start_naming_the_problem(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    output = _start_refused({**PRODUCTION, **env})
    refusals = [line for line in output.splitlines() if "refusing to start the worker" in line]
    assert len(refusals) == 1, output[-3000:]
    assert problem in refusals[0]
    assert "Traceback" not in output
    assert "LiteLLM" not in output  # CrewAI's own multi-line advice is replaced by our one line
    assert KEY not in output


@pytest.fixture
def server(setenv: Any) -> Iterator[LLMServer]:
    with LLMServer() as llm_server:
        setenv(**llm_server.env(api_key=KEY), FIRST_SIP_LLM_MAX_RETRIES="0")
        yield llm_server


def test_llm_check_makes_one_request_and_prints_model_latency_and_tokens(server: LLMServer) -> None:
    result = CliRunner().invoke(cli, ["llm", "check"])
    assert result.exit_code == 0, result.output
    assert server.count() == 1
    sent = server.usage_sent()
    assert result.output.startswith("model openai/gpt-4o-mini: answered in ")
    tokens, prompt, completion = sent["total_tokens"], sent["prompt_tokens"], sent["completion_tokens"]
    assert f"tokens {tokens} (prompt {prompt}, completion {completion})" in result.output
    checked = CliRunner().invoke(cli, ["llm", "check", "--json"])
    as_json = json.loads(checked.stdout)  # stdout only: a warning on stderr must not break the JSON
    assert as_json["model"] == "openai/gpt-4o-mini" and as_json["total_tokens"] == sent["total_tokens"]
    assert as_json["latency_seconds"] > 0


def test_llm_check_fails_with_one_line_naming_the_status(server: LLMServer) -> None:
    server.default = Reply(status=401)
    result = CliRunner().invoke(cli, ["llm", "check"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: LLM provider error (openai/gpt-4o-mini via 127.0.0.1): HTTP 401 authentication failed "
        "(check the API key): Incorrect API key provided: <redacted>."
    ]
    assert KEY not in result.output


def test_llm_check_reports_a_construction_problem(setenv: Any) -> None:
    setenv(FIRST_SIP_LLM_MODEL="anthropic/claude-3-5-haiku-latest")
    result = CliRunner().invoke(cli, ["llm", "check"])
    assert result.exit_code == 1
    assert "the anthropic provider's package is not installed" in result.output


def test_llm_check_on_the_offline_model_says_so(setenv: Any) -> None:
    result = CliRunner().invoke(cli, ["llm", "check"])
    assert result.exit_code == 0, result.output
    assert "offline/extractive (the offline development model; no provider was called)" in result.output


def test_any_model_name_works_with_an_openai_compatible_server(setenv: Any) -> None:
    with LLMServer(model="local-llama-3.1-8b") as server:
        setenv(**server.env(api_key=KEY))
        result = CliRunner().invoke(cli, ["llm", "check"])
        assert result.exit_code == 0, result.output
        assert [r.model for r in server.completions()] == ["local-llama-3.1-8b"]


def test_a_base_url_that_is_not_http_is_refused(setenv: Any) -> None:
    setenv(FIRST_SIP_LLM_MODEL="openai/gpt-4o-mini", OPENAI_BASE_URL="ftp://models.example")
    result = CliRunner().invoke(cli, ["llm", "check"])
    assert result.exit_code == 2
    assert "OPENAI_BASE_URL must be an http:// or https:// URL" in result.output


@pytest.mark.parametrize(
    "reply", [Reply(status=500, error_message="boom\nsecond line"), Reply(malformed=True)]
)
def test_llm_check_failure_is_the_only_line_and_json_on_stdout(server: LLMServer, reply: Reply) -> None:
    """In a process of its own (as an operator runs it): CrewAI's own prints and log lines stay out."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    server.default = reply
    env = {**os.environ, **server.env(api_key=KEY), "FIRST_SIP_LLM_MAX_RETRIES": "0"}
    command = [sys.executable, "-m", "app", "llm", "check"]
    plain = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1
    lines = (plain.stdout + plain.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: LLM provider error (openai/gpt-4o-mini"), lines
    as_json = subprocess.run(
        [*command, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert as_json.returncode == 1 and as_json.stderr == "", as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer == {"ok": False, "error": lines[0].removeprefix("error: ")}
    assert KEY not in plain.stdout + plain.stderr + as_json.stdout


def test_llm_check_json_reports_bad_settings_as_json(setenv: Any) -> None:
    setenv(FIRST_SIP_LLM_MODEL="openai/gpt-4o-mini", OPENAI_BASE_URL="ftp://models.example")
    result = CliRunner().invoke(cli, ["llm", "check", "--json"])
    assert result.exit_code == 2
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and "OPENAI_BASE_URL must be an http:// or https:// URL" in answer["error"]
