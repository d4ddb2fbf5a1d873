"""Errors never leak secrets: the production refusal, tracebacks of a refused start, log redaction."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.errors import ConfigurationError
from app.logs import JSONFormatter, redact, secret_values
from tests.conftest import ROOT

runner = CliRunner()
DB_PW, REDIS_PW, FLOWER_PW = "Db-Pw-q8Xz1", "Rd-Pw-7mKt2", "Fl-Pw-3vNs9"
URLS = {
    "DATABASE_URL": f"postgresql://app:{DB_PW}@db.internal:5432/firstsip",
    "REDIS_URL": f"redis://default:{REDIS_PW}@cache.internal:6379/0",
    "FLOWER_BASIC_AUTH": f"admin:{FLOWER_PW}",
}


def _no_password(text: str) -> None:
    for secret in (DB_PW, REDIS_PW, FLOWER_PW):
        assert secret not in text, text


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"SECRET_KEY": "changethis"}, ["SECRET_KEY"]),
        ({"SECRET_KEY": "a-real-secret-key-value", "LEASE_SECONDS": "soon"}, ["LEASE_SECONDS"]),
        (
            {"SECRET_KEY": "a-real-secret-key-value", "REDIS_URL": f"http://user:{REDIS_PW}@cache:1/0"},
            ["REDIS_URL"],
        ),
        (
            {"SECRET_KEY": "changeme", "FLOWER_BASIC_AUTH": "admin:changeme"},
            ["SECRET_KEY", "FLOWER_BASIC_AUTH"],
        ),
    ],
)
def test_production_refusal_names_variables_never_values(
    setenv, extra: dict[str, str], named: list[str]
) -> None:  # type: ignore[no-untyped-def]
    setenv(APP_ENV="production", **{**URLS, **extra})
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    _no_password(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    result = runner.invoke(cli, ["runs", "list"])
    assert result.exit_code == 2
    _no_password(result.output)
    for name in named:
        assert name in result.stderr, result.stderr


def test_a_refused_process_start_prints_no_password() -> None:
    env = {**os.environ, **URLS, "APP_ENV": "production", "SECRET_KEY": "changethis", "LEASE_SECONDS": "x"}
    for args in (
        [sys.executable, "-m", "app", "runs", "list"],
        # A raw traceback (what a process manager shows when a worker refuses to start).
        [sys.executable, "-c", "from app.config import get_settings; get_settings()"],
        [sys.executable, "-m", "celery", "-A", "app.celery_app", "inspect", "ping"],
    ):
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        _no_password(done.stdout + done.stderr)
        assert "LEASE_SECONDS" in done.stdout + done.stderr, (args, done.stderr[-2000:])


def test_short_secrets_are_redacted_where_they_stand_as_values(setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(REDIS_URL="redis://:abc@127.0.0.1:6379/0", DATABASE_URL="postgresql://u:pw@127.0.0.1/x")
    secrets = secret_values()
    assert "abc" in secrets and "pw" in secrets
    assert redact("redis://:abc@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("postgresql://u:pw@127.0.0.1/x") == "postgresql://u:***@127.0.0.1/x"
    assert redact("password=abc; next") == "password=***; next"
    assert redact('{"password": "pw"}') == '{"password": "***"}'
    # Not everywhere: ordinary words that happen to contain a short secret stay readable.
    assert redact("the abcd of power and a pwned cabc") == "the abcd of power and a pwned cabc"
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "connecting to %s", ("redis://:abc@h:1",), None
    )
    line = json.loads(JSONFormatter(secrets).format(record))
    assert line["message"] == "connecting to redis://:***@h:1"


def test_long_secrets_are_redacted_everywhere(setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(SECRET_KEY="Sk-long-secret-value", FLOWER_BASIC_AUTH=f"admin:{FLOWER_PW}")
    text = f"oops Sk-long-secret-value and {FLOWER_PW} in a sentence"
    assert redact(text) == "oops *** and *** in a sentence"


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "a-real-secret-key-value", "LEASE_SECONDS": "x"}, "LEASE_SECONDS"),
    ],
)
def test_every_procfile_process_refuses_bad_settings_in_one_line(bad: dict[str, str], named: str) -> None:
    """What a process manager shows: one line naming the variable, non-zero, no traceback, no value."""
    from tests.test_deploy_files import procfile

    env = {**os.environ, **URLS, "APP_ENV": "production", **bad}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for process, command in procfile().items():
        done = subprocess.run(
            ["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, (process, output[-2000:])
        assert "Traceback" not in output, (process, output[-2000:])
        assert len(output.strip().splitlines()) == 1 and named in output, (process, output[-2000:])
        _no_password(output)


LOGGING_SCRIPT = """
import logging, os, sys
from app.logs import configure_logging
configure_logging(json_output=sys.argv[1] == "json")
# A third-party logger with a handler of its own (lark ships one), not ours: no formatter of ours.
own = logging.getLogger("thirdparty.own")
own.addHandler(logging.StreamHandler(sys.stderr))
own.propagate = False
names = ["app.execution", "celery", "celery.app.trace", "kombu", "httpx", "LiteLLM", "crewai", "root"]
names.append("thirdparty.own")
secrets = [os.environ[k] for k in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY")]
for name in names:
    log = logging.getLogger(name)
    log.warning("key %s url %s", secrets[0], os.environ["REDIS_URL"], extra={"detail": {"token": secrets[1]}})
    try:
        raise RuntimeError(f"provider refused {secrets[0]} for {os.environ['DATABASE_URL']}")
    except RuntimeError:
        log.exception("failed")
"""


@pytest.mark.parametrize("style", ["json", "console"])
def test_a_known_key_is_masked_through_every_logger(style: str) -> None:
    """In a process of its own: our loggers, Celery's, kombu's, httpx's, LiteLLM's, CrewAI's, the root,
    and one with its own handler; long keys from the environment, a short Redis password, and a
    database password JSON would escape (a quote and non-ASCII letters)."""
    key, aws, redis_pw, db_pw = "sk-live-Known0123456789", "aws/Secret+Key9", "pw1", 'Pä"sswört-9'
    env = {
        **os.environ,
        "OPENAI_API_KEY": key,
        "AWS_SECRET_ACCESS_KEY": aws,
        "REDIS_URL": f"redis://:{redis_pw}@127.0.0.1:6379/0",
        "DATABASE_URL": f"postgresql://app:{db_pw}@127.0.0.1:5432/x",
    }
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, style],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for name in ("app.execution", "celery", "kombu", "httpx", "LiteLLM", "crewai", "root"):
        assert name in output or style == "console", name
    lines = [line for line in output.splitlines() if "key " in line]
    assert len(lines) == 9, output[-3000:]
    for secret in (key, aws, db_pw, db_pw.encode("unicode_escape").decode(), json.dumps(db_pw)[1:-1]):
        assert secret not in output, (secret, output[-3000:])
    assert ":pw1@" not in output and output.count("***") >= 9 * 4, output[-3000:]
