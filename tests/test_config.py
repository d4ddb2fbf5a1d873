"""Configuration: URL rewriting, the embedded default, production refusals."""

from __future__ import annotations

import pytest

from app.config import EMBEDDED_DATABASE_URL, Settings, get_settings, normalize_database_url
from app.errors import ConfigurationError


@pytest.mark.parametrize(
    "given, expected",
    [
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql://u@h:5433/db", "postgresql+psycopg://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
    ],
)
def test_database_url_rewritten(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_embedded_default_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")
    assert get_settings().database_url == EMBEDDED_DATABASE_URL
    monkeypatch.setenv("DATABASE_URL", "")
    get_settings.cache_clear()
    assert get_settings().database_url == EMBEDDED_DATABASE_URL


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:pw@h:6380/1", "unix:///tmp/r.sock"])
def test_redis_schemes_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert get_settings().redis_url == url


def test_bad_redis_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://nope")
    with pytest.raises(ConfigurationError, match="REDIS_URL must start with redis://"):
        get_settings()


def test_bad_prefix_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_KEY_PREFIX", "has space")
    with pytest.raises(ConfigurationError, match="REDIS_KEY_PREFIX"):
        get_settings()


def test_production_refuses_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigurationError) as exc:
        get_settings()
    text = str(exc.value)
    assert "SECRET_KEY is missing or a placeholder" in text
    assert "FLOWER_BASIC_AUTH" in text and "DATABASE_URL must be set" in text


def test_production_accepts_real_secrets() -> None:
    settings = Settings(
        app_env="production",
        database_url="postgres://u:pw@db/app",
        secret_key="a-long-random-value-123",
        flower_basic_auth="ops:s3cret-pass",
    )
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert "s3cret" not in repr(settings)  # secrets are masked in reprs


def test_run_timeout_capped() -> None:
    settings = Settings(default_run_timeout_seconds=600, max_run_timeout_seconds=900)
    assert settings.run_timeout(None) == 600
    assert settings.run_timeout(120) == 120
    assert settings.run_timeout(5000) == 900


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "greater than 0"),
        ("-5", "greater than 0"),
        ("soon", "valid number"),
        ("inf", "finite number"),
        ("86400", "less than or equal to 3600"),
    ],
)
def test_a_bad_scheduler_tick_is_refused_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("SCHEDULER_TICK_SECONDS", value)
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match=f"^SCHEDULER_TICK_SECONDS: .*{problem}"):
        get_settings()
