"""Security properties as tests: no pickle, checked names and paths, no secrets out, bound SQL."""

from __future__ import annotations

import json
import logging
import pickle
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import api, keys
from app.db.engine import session_scope
from app.db.models import PluginRun, RunStatus, User
from app.logs import JSONFormatter, redact, secret_values
from app.plugins.loader import load_callable
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT, unique_email
from tests.processes import celery_worker

APP = ROOT / "app"


def _sources() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def test_no_pickle_anywhere_in_the_code() -> None:
    offenders = [
        str(p)
        for p in _sources()
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|shelve)\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_celery_accepts_json_only() -> None:
    from app.celery_app import celery_app

    assert celery_app.conf.accept_content == ["json"]
    assert celery_app.conf.task_serializer == "json" and celery_app.conf.result_serializer == "json"


@pytest.mark.slow
def test_worker_rejects_a_pickle_message(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    """A pickled execute_run for a real run is refused; the same task as JSON runs."""
    from app.celery_app import celery_app

    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    user = api.create_user(unique_email())
    run = api.trigger_run(user.id, "daily-news-digest")
    with celery_worker(pool="threads", concurrency=1) as worker:
        celery_app.send_task(
            "app.tasks.execute_run", args=(str(run.run_id),), serializer="pickle", queue="runs"
        )
        worker.wait_for(r"ContentDisallowed|disallowed|Refusing to deserialize", timeout=60)
        assert api.get_run(run.run_id).status == RunStatus.QUEUED  # the pickle never executed
        celery_app.send_task("app.tasks.execute_run", args=(str(run.run_id),), queue="runs")
        assert api.wait_for_run(run.run_id, timeout=120).status == RunStatus.COMPLETED


@pytest.mark.parametrize(
    "name", ["../etc", "a b", "UPPER", "x" * 64, "{evil}", "a:b", "", "plugin\n", "-leading-dash"]
)
def test_plugin_names_never_reach_a_redis_key_unchecked(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid plugin name"):
        keys.stream(name)
    with pytest.raises(ValueError):
        keys.dead_letters(name)


def test_stream_keys_round_trip_only_for_our_keys() -> None:
    assert keys.plugin_from_stream(keys.stream("daily-news-digest")) == "daily-news-digest"
    assert keys.plugin_from_stream(keys.dead_letters("daily-news-digest")) == "daily-news-digest"
    assert keys.plugin_from_stream("other:plugin:execution:{x}") is None
    assert keys.plugin_from_stream(keys.stream("a") + "x") is None


@pytest.mark.parametrize("ref", ["../outside.py:f", "/etc/passwd.py:f", "crew/../../x.py:f"])
def test_plugin_code_cannot_be_loaded_from_outside_its_folder(tmp_path: Path, ref: str) -> None:
    from app.errors import PluginError

    folder = tmp_path / "plugin"
    folder.mkdir()
    (tmp_path / "outside.py").write_text("def f():\n    return 'escaped'\n")
    with pytest.raises(PluginError, match=r"plugin folder|absolute"):
        load_callable(folder, ref)


def test_plugin_code_symlink_escape_refused(tmp_path: Path) -> None:
    from app.errors import PluginError

    folder = tmp_path / "plugin"
    folder.mkdir()
    (tmp_path / "outside.py").write_text("def f():\n    return 'escaped'\n")
    (folder / "inside.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(PluginError, match="outside the plugin folder"):
        load_callable(folder, "inside.py:f")


def test_secrets_are_redacted_from_logs(setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(
        FLOWER_BASIC_AUTH="ops:flower-secret-pass",
        SECRET_KEY="secret-key-value-123",
        OPENAI_API_KEY="sk-test-abcdef123456",
        DATABASE_URL="postgresql://app:db-password-42@localhost/x",
    )
    secrets = secret_values()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom %s", ("sk-test-abcdef123456",), None)
    record.detail = "conn postgresql://app:db-password-42@localhost/x auth ops:flower-secret-pass"  # type: ignore[attr-defined]
    text = JSONFormatter(secrets).format(record)
    for secret in ("sk-test-abcdef123456", "db-password-42", "flower-secret-pass", "secret-key-value-123"):
        assert secret not in text
    assert json.loads(text)["message"] == "boom ***"
    assert redact("key=sk-test-abcdef123456", secrets) == "key=***"


def test_secrets_never_in_settings_reprs(setenv) -> None:  # type: ignore[no-untyped-def]
    from app.config import get_settings

    setenv(FLOWER_BASIC_AUTH="ops:flower-secret-pass", SECRET_KEY="secret-key-value-123")
    shown = repr(get_settings()) + str(get_settings().model_dump())
    assert "flower-secret-pass" not in shown and "secret-key-value-123" not in shown


def test_sql_is_never_built_from_strings() -> None:
    """No f-string, %-format or concatenation feeds text()/execute() in the application."""
    pattern = re.compile(r"(text|execute|exec_driver_sql)\(\s*(f[\"']|[\"'][^\"']*[\"']\s*(%|\+|\.format))")
    offenders = [f"{p}:{m.group(0)}" for p in _sources() for m in pattern.finditer(p.read_text())]
    assert offenders == []


def test_hostile_strings_are_data_not_sql(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    hostile = "x'); DROP TABLE users; --@example.com"
    user = api.create_user(hostile)
    assert api.get_user(user.id).email == hostile.lower()
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1
    with pytest.raises(Exception, match="no run"):
        api.get_run(uuid.UUID(int=0))
    assert api.list_runs(plugin="'; DELETE FROM plugin_runs; --") == []
    with session_scope() as session:
        session.scalar(select(func.count()).select_from(PluginRun))  # the table is still there


def test_pickle_payload_in_a_stream_entry_is_rejected_not_unpickled() -> None:
    from app.streams.envelope import EnvelopeRejection, Reason, parse_entry

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, ("raise SystemExit('unpickled!')",))

    blob = pickle.dumps({"run_id": str(uuid.uuid4()), "x": Boom()})
    result = parse_entry({keys.FIELD_VERSION: "1", keys.FIELD_PAYLOAD: blob})
    assert isinstance(result, EnvelopeRejection) and result.reason in (Reason.NOT_UTF8, Reason.NOT_JSON)
