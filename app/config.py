"""Settings from the environment: the one place that reads configuration.

Every process calls :func:`get_settings`; nothing reads ``os.environ`` for
application settings elsewhere. Settings are evaluated on first use, never at
import time, so tests and the CLI can set the environment first.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigurationError
from app.plugins.names import PLUGIN_NAME_RE, QUEUE_NAME_RE

#: Where the embedded default keeps its files (SQLite database, private Redis).
VAR_DIR = Path("var")
EMBEDDED_DATABASE_URL = f"sqlite:///{VAR_DIR / 'first-sip.db'}"

# Values that mean "somebody copied the example file and never changed it".
_PLACEHOLDERS = frozenset({"", "changethis", "change-me", "changeme", "secret", "password"})


def normalize_database_url(url: str) -> str:
    """Return ``url`` with PostgreSQL schemes pointing at the psycopg 3 driver.

    PaaS providers hand out ``postgres://``; SQLAlchemy would pick psycopg2 for
    ``postgresql://``. Both become ``postgresql+psycopg://``; other URLs are
    returned unchanged.
    """
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def address(url: str) -> str:
    """Where a service URL points, for messages: ``host:port`` (or the file/socket), never credentials."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an unparseable URL"
    if parts.scheme.startswith("sqlite"):
        return url.split("///", 1)[-1] or "memory"
    if parts.scheme == "unix":
        return parts.path or "a unix socket"
    return f"{host or 'localhost'}:{port}" if port else (host or "localhost")


def parse_caps(text: str) -> dict[str, int | None]:
    """``plugin=n,plugin=none`` -> {plugin: n or None}; ValueError naming the bad item."""
    caps: dict[str, int | None] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not PLUGIN_NAME_RE.fullmatch(name):
            raise ValueError(
                f"FIRST_SIP_MAX_CONCURRENCY: {item!r} must be plugin=n "
                "(a plugin name, then a count or 'none')"
            )
        if value.lower() == "none":
            caps[name] = None
        elif value.isdigit() and 1 <= int(value) <= 100_000:
            caps[name] = int(value)
        else:
            raise ValueError(
                f"FIRST_SIP_MAX_CONCURRENCY: the cap of {name!r} must be a whole number from 1 to 100000 "
                "or 'none'"
            )
    return caps


def parse_queues(text: str) -> list[str]:
    """``a,b`` -> [a, b]; ValueError naming a bad queue name."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if not QUEUE_NAME_RE.fullmatch(name):
            raise ValueError(f"FIRST_SIP_QUEUES: {name!r} must match {QUEUE_NAME_RE.pattern}")
    return list(dict.fromkeys(names))


class Settings(BaseSettings):
    """Typed settings; field ``foo_bar`` is read from ``FOO_BAR``."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    app_env: Literal["development", "production"] = "development"
    database_url: str = EMBEDDED_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:6379/0"
    plugins_dir: Path = Path("plugins")
    #: Every Redis key this project writes, Celery's broker keys included, starts with it.
    redis_key_prefix: str = "first-sip"
    #: Secret used for signing (Flower's cookie secret); required in production.
    secret_key: SecretStr = SecretStr("changethis")
    #: ``user:password`` for Flower; required in production.
    flower_basic_auth: SecretStr | None = None

    # LLM: a model name CrewAI's ``LLM`` accepts; unset means the offline model
    # in development and a refusal to start in production.
    llm_model: str | None = Field(default=None, alias="FIRST_SIP_LLM_MODEL")
    #: Benchmarks only: seconds the offline LLM sleeps per call.
    offline_llm_delay_seconds: float = Field(default=0.0, ge=0, alias="FIRST_SIP_OFFLINE_LLM_DELAY")
    #: Seconds one provider request may take (connect + read), capped at half the run's time limit,
    #: so a hung provider is a retryable error long before the run's limit.
    llm_timeout_seconds: float = Field(default=60.0, gt=0, le=3600, alias="FIRST_SIP_LLM_TIMEOUT_SECONDS")
    #: The provider client's own retries per LLM call. Our attempts (MAX_ATTEMPTS) are the retry policy.
    llm_max_retries: int = Field(default=0, ge=0, le=5, alias="FIRST_SIP_LLM_MAX_RETRIES")
    #: Ask the provider for streamed answers (usage still recorded: stream_options.include_usage).
    llm_stream: bool = Field(default=False, alias="FIRST_SIP_LLM_STREAM")
    #: An OpenAI-compatible server for ``openai/<model>`` (the OpenAI SDK's own variables). Passed to
    #: CrewAI explicitly, so a model name OpenAI does not publish is accepted for such a server.
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "OPENAI_API_BASE")
    )

    # Execution.
    default_run_timeout_seconds: int = Field(default=600, ge=1)
    max_run_timeout_seconds: int = Field(default=1800, ge=1)
    lease_seconds: int = Field(default=60, ge=2)
    max_attempts: int = Field(default=3, ge=1)
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    #: The longest provider Retry-After honoured; a longer one is cut to this.
    retry_after_max_seconds: float = Field(default=3600.0, gt=0)
    worker_max_tasks_per_child: int = Field(default=200, ge=1)
    #: Where each run's scratch folder is made (removed after the run). Unset: the system temp dir.
    run_workdir_root: Path | None = None
    #: Seconds ``plugins validate`` and ``release`` give one plugin to import and build its crew.
    plugin_check_timeout_seconds: float = Field(default=60.0, gt=0)

    # Streams.
    visibility_timeout_seconds: int = Field(default=60, ge=1)
    max_deliveries: int = Field(default=5, ge=1)
    stream_read_count: int = Field(default=100, ge=1)
    stream_block_ms: int = Field(default=1000, ge=0)
    stream_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    reclaim_interval_seconds: float = Field(default=5.0, gt=0)
    consumer_idle_removal_seconds: int = Field(default=3600, ge=60)
    #: Stable consumer name (e.g. a StatefulSet pod name): a restart then resumes its own
    #: pending entries at once. Unset: ``<host>-<pid>-<random>``, and reclaim takes them over.
    consumer_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9:_.@-]{0,127}$")
    #: How often the consumer refreshes its heartbeat key (its TTL is three times this).
    consumer_heartbeat_seconds: float = Field(default=5.0, gt=0)
    #: How often the consumer re-reads the enabled plugins (new plugins need no restart).
    plugin_refresh_seconds: float = Field(default=30.0, gt=0)
    #: How often the consumer trims each stream by age (MINID, never past a pending entry).
    stream_trim_interval_seconds: float = Field(default=300.0, gt=0)

    # Fetching (ctx.fetch): what a user's settings can make a worker download.
    #: Comma-separated CIDRs a fetch may reach although they are not public (loopback, private...).
    #: Empty (the default): only public addresses. Metadata addresses are refused regardless.
    fetch_allow_networks: str = ""
    #: Total seconds for one fetch: lookup, connect, TLS, redirects and body together.
    fetch_deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    #: Largest decoded body one fetch returns.
    fetch_max_bytes: int = Field(default=5_000_000, ge=1)
    #: Redirects one fetch follows (each checked like the first URL).
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)

    # Flow control (app/flow): caps and budgets shared by the whole cluster through Redis.
    #: ``plugin=n,plugin=n``: per-plugin caps on runs in flight; they override the manifests'
    #: ``max_concurrency`` (``plugin=none`` lifts a manifest's cap).
    max_concurrency: str = Field(default="", alias="FIRST_SIP_MAX_CONCURRENCY")
    #: LLM requests the whole cluster may send per budget window (unset: no budget).
    llm_rpm: int | None = Field(default=None, ge=1, alias="FIRST_SIP_LLM_RPM")
    #: The budget's rolling window; 60 s makes FIRST_SIP_LLM_RPM requests per minute (tests shorten it).
    llm_budget_window_seconds: float = Field(
        default=60.0, gt=0, le=3600, alias="FIRST_SIP_LLM_BUDGET_WINDOW_SECONDS"
    )
    #: A provider's 429 pauses the model for the whole cluster (off: each worker only retries later).
    llm_pause_on_429: bool = Field(default=True, alias="FIRST_SIP_LLM_PAUSE_ON_429")
    #: How long a provider's 429 without Retry-After pauses the model cluster-wide.
    llm_pause_seconds: float = Field(default=10.0, gt=0, le=3600, alias="FIRST_SIP_LLM_PAUSE_SECONDS")
    #: Upper bound on a provider's Retry-After (a hostile or broken value must not stop us for days).
    llm_pause_max_seconds: float = Field(
        default=300.0, gt=0, le=24 * 3600, alias="FIRST_SIP_LLM_PAUSE_MAX_SECONDS"
    )
    #: How long a dispatched run holds its slot before a worker claims it (then its lease holds it).
    dispatch_lease_seconds: int = Field(default=120, ge=1, alias="FIRST_SIP_DISPATCH_LEASE_SECONDS")
    #: Extra Celery queues a worker started without -Q consumes (comma-separated), on top of
    #: ``runs``, ``scheduler`` and the queues named by the manifests under PLUGINS_DIR.
    queues: str = Field(default="", alias="FIRST_SIP_QUEUES")

    # Scheduling.
    #: A due run waits up to one tick to be created: a finite, positive interval of at most an hour
    #: (an infinite or day-long tick would silently stop the schedules).
    scheduler_tick_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    scheduler_batch_size: int = Field(default=1000, ge=1)
    #: Threads a tick uses once its first batch is full (a rush); each holds one connection.
    scheduler_threads: int = Field(default=2, ge=1, le=8)
    catchup_grace_seconds: int = Field(default=6 * 3600, ge=0)
    outbox_grace_seconds: int = Field(default=120, ge=1)

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return normalize_database_url(value or EMBEDDED_DATABASE_URL)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("OPENAI_BASE_URL must be an http:// or https:// URL")
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:_.-]{0,63}", value):
            raise ValueError("REDIS_KEY_PREFIX must be 1-64 characters of [A-Za-z0-9:_.-]")
        return value

    @field_validator("fetch_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        from app.net.policy import parse_networks

        try:
            parse_networks(value)
        except ValueError as exc:
            raise ValueError(f"FETCH_ALLOW_NETWORKS: {exc}") from None
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _caps(cls, value: str) -> str:
        parse_caps(value)  # raises naming the bad item
        return value

    @field_validator("queues")
    @classmethod
    def _queues(cls, value: str) -> str:
        parse_queues(value)
        return value

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.app_env != "production":
            return self
        problems = []
        if self.secret_key.get_secret_value().strip().lower() in _PLACEHOLDERS:
            problems.append("SECRET_KEY is missing or a placeholder")
        auth = self.flower_basic_auth.get_secret_value() if self.flower_basic_auth else ""
        user, _, password = auth.partition(":")
        if not user or password.strip().lower() in _PLACEHOLDERS:
            problems.append("FLOWER_BASIC_AUTH must be user:password with a real password")
        if self.database_url == EMBEDDED_DATABASE_URL:
            problems.append("DATABASE_URL must be set (the SQLite default is for development)")
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @property
    def max_concurrency_overrides(self) -> dict[str, int | None]:
        """FIRST_SIP_MAX_CONCURRENCY as plugin -> cap (None: no cap, whatever the manifest says)."""
        return parse_caps(self.max_concurrency)

    @property
    def extra_queues(self) -> list[str]:
        """FIRST_SIP_QUEUES as a list of queue names."""
        return parse_queues(self.queues)

    def run_timeout(self, manifest_timeout: int | None) -> int:
        """The hard time limit for one run: the plugin's own, capped by the global maximum."""
        return min(manifest_timeout or self.default_run_timeout_seconds, self.max_run_timeout_seconds)


def _variable(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return ""
    field = Settings.model_fields.get(str(loc[0]))
    name = (field.alias if field is not None and field.alias else str(loc[0])).upper()
    return name + "".join(f"[{part}]" for part in loc[1:])


def describe(exc: ValidationError) -> str:
    """Every invalid variable and what is wrong with it, never the value it holds.

    pydantic's own text quotes each ``input_value``: DATABASE_URL, REDIS_URL and
    FLOWER_BASIC_AUTH carry passwords, so it must never be printed.
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        name = _variable(tuple(error["loc"]))
        lines.append(f"{name}: {message}" if name else message)
    return "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first call.

    Raises :class:`ConfigurationError` naming every invalid variable and what is
    wrong with it; its message never contains a variable's value.
    """
    try:
        return Settings()
    except ValidationError as exc:
        # ``from None``: the chained pydantic error would print the values in a traceback.
        raise ConfigurationError(describe(exc)) from None
