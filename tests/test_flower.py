"""Flower against a real worker, in Debian's headless Chromium: login required, runs visible."""

from __future__ import annotations

import base64
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from app import api, keys
from app.db.engine import session_scope
from app.db.models import RunStatus
from app.local_processes import free_port
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from app.task_names import task_id_for
from tests.conftest import ROOT, unique_email
from tests.llm_server import LLMServer, Reply
from tests.plugins.harness import (
    PLUGINS_DIR,
    dispatch,
    get_run,
    make_run,
    pending_entry,
    wait_for,
    wait_for_entry_acked,
)
from tests.processes import ARTIFACTS, ManagedProcess, celery_worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AUTH = ("ops", "flower-test-password-123")

pytestmark = pytest.mark.slow


def _get(url: str, *, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def flower(db, redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = ManagedProcess(
        "flower",
        [sys.executable, "-m", "app", "flower", "--address", "127.0.0.1", "--port", str(port)],
        env={"FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}"},
    )
    try:
        proc.start(ready=r"Visit me at|Listening|Registered", timeout=60)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url + "/healthcheck", proc, seconds=30)
        yield url
        proc.stop(timeout=15)
    finally:
        proc.kill()


def _wait_healthy(url: str, proc: ManagedProcess, *, seconds: float) -> None:
    """Return once ``url`` answers 200; fail the test (not carry on) if it never does."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _body = _get(url)
        except OSError as exc:  # refused or reset while Flower starts
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.2)
    pytest.fail(
        f"Flower's {url} never answered 200 within {seconds:.0f}s (last: {last}); log: {proc.log_path}"
    )


def test_flower_refuses_public_address_without_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    result = CliRunner().invoke(cli, ["flower", "--address", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2 and "without authentication" in result.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_flower_login_and_execute_run_visible(flower: str) -> None:
    assert _get(flower + "/tasks")[0] == 401
    assert _get(flower + "/api/tasks", auth=("ops", "wrong"))[0] == 401

    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    user = api.create_user(unique_email())
    with celery_worker(pool="threads", concurrency=2):
        run = api.trigger_run(user.id, "daily-news-digest")
        # Straight to Celery (no consumer in this test): Flower sees the task and its arguments.
        from app.celery_app import celery_app
        from app.tasks import execute_run

        # Own connection: this test must not depend on the state of the app's shared producer pool.
        with celery_app.connection_for_write() as connection:
            execute_run.apply_async(
                args=(str(run.run_id),),
                kwargs={"plugin": "daily-news-digest"},
                task_id=task_id_for(run.run_id, None),
                connection=connection,
            )
        done = api.wait_for_run(run.run_id, timeout=120)
        assert done.status.value == "completed"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = _get(flower + "/api/tasks", auth=AUTH)
            if status == 200 and str(run.run_id) in body.decode():
                break
            time.sleep(0.5)
        tasks = json.loads(_get(flower + "/api/tasks", auth=AUTH)[1])
        ours = [t for t in tasks.values() if str(run.run_id) in str(t.get("args"))]
        assert ours and ours[0]["name"] == "app.tasks.execute_run"
        assert "daily-news-digest" in str(ours[0].get("kwargs"))

        from playwright.sync_api import sync_playwright

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "flower-tasks.png"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            try:
                context = browser.new_context(
                    http_credentials={"username": AUTH[0], "password": AUTH[1]},
                    viewport={"width": 1600, "height": 900},
                )
                page = context.new_page()
                response = page.goto(flower + "/tasks")
                assert response is not None and response.status == 200
                try:
                    page.get_by_text(str(run.run_id)).first.wait_for(timeout=20_000)
                finally:
                    page.screenshot(path=str(shot), full_page=True)
                assert "execute_run" in page.content()
            finally:
                browser.close()
        assert shot.stat().st_size > 10_000


def _flower_task(flower: str, task_id: str, *, state: str, timeout: float = 60) -> dict[str, object]:
    """The task as Flower's API shows it, once it reached ``state``."""
    deadline = time.monotonic() + timeout
    seen: dict[str, object] = {}
    while time.monotonic() < deadline:
        status, body = _get(flower + f"/api/task/info/{task_id}", auth=AUTH)
        if status == 200:
            seen = json.loads(body)
            if seen.get("state") == state:
                return seen
        time.sleep(0.5)
    raise AssertionError(f"Flower never showed {task_id} as {state}: {seen}")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_flower_shows_a_failed_run_under_failed_and_a_retried_run_under_retried(
    flower: str, redis_client: redis.Redis
) -> None:
    key = "sk-test-flower-0123456789abcdef"
    with LLMServer() as server:
        # The prompt names the run's topic: "refused" runs get a 401, "flaky" runs a 503.
        server.script = lambda request: Reply(status=401 if "refused" in json.dumps(request.body) else 503)
        env = {
            **server.env(api_key=key),
            "PLUGINS_DIR": PLUGINS_DIR,
            "FIRST_SIP_LLM_MAX_RETRIES": "0",
            "RETRY_BASE_SECONDS": "300",
        }
        failed = make_run("llm-chain", {"steps": 1, "topic": "refused"})
        retried = make_run("llm-chain", {"steps": 1, "topic": "flaky"})
        with celery_worker(pool="threads", concurrency=2, env=env) as worker:
            entries = {}
            for run_id in (failed, retried):
                entries[run_id] = pending_entry(redis_client, "llm-chain", run_id)
                dispatch(run_id, **entries[run_id])
            failed_row = wait_for(failed)
            retried_row = wait_for(retried, RunStatus.PENDING, attempts=1)
            assert failed_row.status == RunStatus.FAILED
            failed_task = task_id_for(failed, entries[failed]["entry_id"])
            retried_task = task_id_for(retried, entries[retried]["entry_id"])
            shown = _flower_task(flower, failed_task, state="FAILURE")
            assert "RunFailed" in str(shown.get("exception"))
            assert "HTTP 401 authentication failed" in str(shown.get("exception"))
            assert key not in json.dumps(shown)
            shown = _flower_task(flower, retried_task, state="RETRY")
            assert "HTTP 503 server error" in str(shown.get("exception"))
            # The raised outcome neither requeued the message nor skipped the stream's XACK.
            for entry in entries.values():
                wait_for_entry_acked(redis_client, entry)
            time.sleep(2)
            assert server.count() == 2, "a raised outcome must not make Celery deliver the task again"
            # Acknowledged, not left for redelivery after the broker's visibility timeout.
            assert redis_client.hlen(keys.celery_prefix() + "unacked") == 0
            assert get_run(retried).attempts == 1 and get_run(failed).attempts == 1
            assert retried_row.error_message is not None and "HTTP 503" in retried_row.error_message
            assert key not in worker.output
            _look_in_the_browser(flower, failed_task=failed_task, retried_task=retried_task)


def _look_in_the_browser(flower: str, *, failed_task: str, retried_task: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            context = browser.new_context(
                http_credentials={"username": AUTH[0], "password": AUTH[1]},
                viewport={"width": 1600, "height": 900},
            )
            page = context.new_page()
            page.goto(flower + "/tasks")
            for button, task_id, other, shot in (
                ("Failed", failed_task, retried_task, "flower-failed.png"),
                ("Retried", retried_task, failed_task, "flower-retried.png"),
            ):
                page.get_by_role("button", name=button, exact=True).click()
                try:
                    page.get_by_text(task_id).first.wait_for(timeout=20_000)
                finally:
                    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
                assert page.get_by_text(other).count() == 0
            page.goto(flower + f"/task/{failed_task}")
            page.get_by_text("HTTP 401 authentication failed").first.wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "flower-failed-task.png"), full_page=True)
        finally:
            browser.close()
