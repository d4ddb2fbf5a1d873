"""The Celery application: Redis broker, JSON only, late acks, our own logging.

Configuration is added lazily (``add_defaults`` with a callable), so importing
this module reads no settings; the first use of ``celery_app.conf`` does.
Run state lives in PostgreSQL, so results are ignored. Nothing here imports
CrewAI, the execution package or the database: beat, the consumer and the API
import this module too. The worker's start-up hooks are in
:mod:`app.worker_hooks`, connected by :mod:`app.tasks` (which the worker
imports through ``include``).
"""

from __future__ import annotations

from typing import Any

import click
from celery import Celery, signals
from kombu.entity import Exchange, Queue

from app import keys
from app.aligned_schedule import AlignedSchedule
from app.config import Settings, get_settings
from app.plugins.names import DEFAULT_RUNS_QUEUE, SCHEDULER_QUEUE
from app.task_names import SCHEDULE_DUE_RUNS

#: Queue of execute_run tasks; schedule_due_runs uses its own so a backlog of runs never delays a tick.
#: A plugin may route its runs to a queue of its own (manifest key ``queue``).
RUNS_QUEUE = DEFAULT_RUNS_QUEUE
#: Extra seconds Celery's own hard limit allows past a plugin's timeout (our limit fires first).
TIME_LIMIT_MARGIN_SECONDS = 60


def plugin_queues(plugins_dir: str) -> list[str]:
    """The queues the manifests under ``plugins_dir`` route to (unreadable manifests skipped).

    Only the manifests are read (no schemas, no crews): beat and the consumer evaluate this
    configuration too. A broken manifest is reported by ``plugins validate`` and sync.
    """
    import os
    from pathlib import Path

    from app.errors import PluginError
    from app.plugins.manifest import MANIFEST_FILE, load_manifest

    found = []
    for root in (Path(p) for p in plugins_dir.split(os.pathsep) if p):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if (folder / MANIFEST_FILE).is_file() and not folder.name.startswith((".", "_")):
                try:
                    found.append(load_manifest(folder).queue)
                except PluginError:
                    continue
    return found


def known_queues(settings: Settings) -> list[str]:
    """Every queue a worker started without ``-Q`` consumes: runs, scheduler, FIRST_SIP_QUEUES,
    and the queues of the plugins under PLUGINS_DIR (in that order, each once)."""
    names = [RUNS_QUEUE, SCHEDULER_QUEUE, *settings.extra_queues, *plugin_queues(str(settings.plugins_dir))]
    return list(dict.fromkeys(names))


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


def _config() -> dict[str, Any]:
    settings = get_settings()
    hard_limit = settings.max_run_timeout_seconds + TIME_LIMIT_MARGIN_SECONDS
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": {
            # Every broker key under our prefix: tests and tenants never see each other's queues.
            "global_keyprefix": keys.celery_prefix(),
            # Longer than the longest run, or Redis would redeliver a task that is still running.
            "visibility_timeout": hard_limit + 300,
        },
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": hard_limit,
        "task_soft_time_limit": hard_limit - 30,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        # With REMAP_SIGTERM=SIGQUIT (Procfile), SIGTERM becomes a warm shutdown capped at this
        # many seconds, inside the 30 s a PaaS allows; an unfinished run's lease then expires.
        "worker_soft_shutdown_timeout": 20.0,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_default_queue": RUNS_QUEUE,
        # A worker without -Q consumes all of these: the scheduler's queue included, so a plain
        # `celery worker` never leaves schedules silently unrun. Same shape as the queues Celery
        # creates on demand (exchange and routing key named after the queue), so routing agrees.
        "task_queues": [_queue(name) for name in known_queues(settings)],
        "task_routes": {SCHEDULE_DUE_RUNS: {"queue": SCHEDULER_QUEUE}},
        "beat_schedule": {
            "schedule-due-runs": {
                "task": SCHEDULE_DUE_RUNS,
                # On the clock's :00/:30 (for 30 s), not 30 s after beat started: schedules
                # are whole minutes, so a due run is created within a second of its minute.
                "schedule": AlignedSchedule(settings.scheduler_tick_seconds),
                # A tick that could not run in time is pointless: the next one does the same work.
                "options": {"expires": settings.scheduler_tick_seconds},
            }
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


def _refuse_bad_settings(ctx: click.Context, _param: click.Parameter, _value: Any) -> None:
    """Stop a ``celery`` command (worker, beat, flower...) on invalid settings with one line, exit 2.

    Without it the first read of the configuration happens while Celery parses the
    command's options, and the refusal ends in a traceback. The message names the
    variables and what is wrong with them, never their values (:func:`app.config.describe`).
    """
    from app.errors import ConfigurationError

    try:
        get_settings()
    except ConfigurationError as exc:
        click.echo(f"error: configuration: {exc}", err=True)
        ctx.exit(2)


celery_app = Celery("first_sip", include=["app.tasks"])
celery_app.add_defaults(_config)
# A preload option is added to every `celery` sub-command; an eager one is parsed before the
# others (whose defaults read the configuration). Hidden: it is a check, not a switch.
celery_app.user_options["preload"].add(
    click.Option(
        ["--check-settings"],
        is_flag=True,
        hidden=True,
        is_eager=True,
        expose_value=False,
        callback=_refuse_bad_settings,
        help="Refuse to start on invalid settings (always on).",
    )
)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting this signal stops Celery from configuring logging itself.
    from app.logs import configure_logging

    configure_logging()
