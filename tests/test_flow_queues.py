"""Per-plugin queues with a real worker: a plain worker (no ``-Q``) consumes every queue the app needs.

The worker is started exactly as the Procfile starts it (no ``--queues``), with
PLUGINS_DIR holding a plugin whose manifest routes its runs to ``slow``; the
scheduler's tick and that plugin's runs must both be executed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis
import yaml

from app import keys
from app.db.models import RunStatus
from tests.plugins.harness import TEST_PLUGINS, get_run, make_run, wait_for
from tests.processes import VENV_BIN, ManagedProcess

WAIT = 120.0


def _plain_worker(env: dict[str, str]) -> ManagedProcess:
    args = [
        str(VENV_BIN / "celery"),
        "-A",
        "app.celery_app:celery_app",
        "worker",
        "--pool=threads",
        "--concurrency=2",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        f"--hostname=plain-{time.monotonic_ns()}@%h",
    ]
    return ManagedProcess("worker-plain", args, env=env).start(ready=r"ready\.", timeout=WAIT)


def test_a_plain_worker_consumes_runs_scheduler_and_plugin_queues(
    db, redis_client: redis.Redis, tmp_path: Path, setenv
) -> None:  # type: ignore[no-untyped-def]
    plugins = tmp_path / "plugins"
    shutil.copytree(TEST_PLUGINS / "controlled", plugins / "controlled")
    manifest = plugins / "controlled" / "plugin.yaml"
    manifest.write_text(yaml.safe_dump({**yaml.safe_load(manifest.read_text()), "queue": "slow"}))
    setenv(PLUGINS_DIR=str(plugins), FIRST_SIP_QUEUES="extra")
    worker = _plain_worker({"PLUGINS_DIR": str(plugins), "FIRST_SIP_QUEUES": "extra"})
    try:
        for queue in ("runs", "scheduler", "extra", "slow"):
            assert f"{queue}" in worker.output.split("[queues]")[1].split("[tasks]")[0]
        from app.celery_app import celery_app
        from app.tasks import execute_run, schedule_due_runs

        run_id = make_run("controlled", {"record_path": str(tmp_path / "record.txt")})
        with celery_app.connection_for_write() as connection:
            execute_run.apply_async(args=[str(run_id)], queue="slow", connection=connection)
            schedule_due_runs.apply_async(connection=connection)  # routed to the scheduler queue
        assert wait_for(run_id, timeout=WAIT).status == RunStatus.COMPLETED
        worker.wait_for(r"schedule_due_runs\[[^\]]+\] succeeded", timeout=WAIT)
        assert get_run(run_id).attempts == 1
        assert redis_client.llen(keys.celery_queue("scheduler")) == 0
    finally:
        worker.stop()
        worker.kill()
