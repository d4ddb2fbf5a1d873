"""No setting is ever lost by accident: every configure combination, asserting what is stored after.

The CLI and the Python API share one rule: --set/--file merge into what is
stored, --unset removes keys, --enable/--disable touch only the flag, and only
--replace drops every key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import api
from app.cli import cli
from app.db.engine import session_scope
from app.errors import SettingsValidationError
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import unique_email

runner = CliRunner()
PLUGIN = "cfg-plugin"
START = {"preferred_time": "07:30", "topics": ["sports"], "frequency": "weekly"}


@pytest.fixture
def user(db, redis_client, make_plugin):  # type: ignore[no-untyped-def]
    make_plugin(PLUGIN)
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    info = api.create_user(unique_email())
    api.configure_plugin(info.id, PLUGIN, START)
    return info


def configure(user: api.UserInfo, *args: str) -> None:
    result = runner.invoke(cli, ["configure", user.email, PLUGIN, *args])
    assert result.exit_code == 0, result.output


def stored(user: api.UserInfo) -> tuple[dict[str, object], bool]:
    config = api.get_config(user.id, PLUGIN)
    return config.settings, config.enabled


def test_first_configuration_is_enabled_with_what_was_given(db, redis_client, make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin(PLUGIN)
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    fresh = api.create_user(unique_email())
    configure(fresh, "--set", "preferred_time=08:00")
    assert stored(fresh) == ({"preferred_time": "08:00"}, True)
    other = api.create_user(unique_email())
    configure(other, "--disable")  # a first configuration may start disabled, with every default
    assert stored(other) == ({}, False)
    assert api.get_config(other.id, PLUGIN).next_run_at is None


def test_set_merges(user) -> None:  # type: ignore[no-untyped-def]
    configure(user, "--set", "preferred_time=09:15")
    assert stored(user) == ({**START, "preferred_time": "09:15"}, True)


def test_unset_goes_back_to_the_default(user) -> None:  # type: ignore[no-untyped-def]
    configure(user, "--unset", "frequency", "--unset", "preferred_time")
    assert stored(user) == ({"topics": ["sports"]}, True)
    configure(user, "--unset", "never-set")  # idempotent: nothing to remove is not an error
    assert stored(user) == ({"topics": ["sports"]}, True)


def test_disable_only_touches_the_flag(user) -> None:  # type: ignore[no-untyped-def]
    configure(user, "--disable")
    assert stored(user) == (START, False)
    assert api.get_config(user.id, PLUGIN).next_run_at is None


def test_enable_only_touches_the_flag(user) -> None:  # type: ignore[no-untyped-def]
    api.set_enabled(user.id, PLUGIN, False)
    configure(user, "--enable")
    assert stored(user) == (START, True)
    assert api.get_config(user.id, PLUGIN).next_run_at is not None


def test_no_flag_keeps_the_flag(user) -> None:  # type: ignore[no-untyped-def]
    api.set_enabled(user.id, PLUGIN, False)
    configure(user, "--set", 'topics=["science"]')
    assert stored(user) == ({**START, "topics": ["science"]}, False)


def test_set_and_disable(user) -> None:  # type: ignore[no-untyped-def]
    configure(user, "--set", "preferred_time=10:00", "--disable")
    assert stored(user) == ({**START, "preferred_time": "10:00"}, False)


def test_file_merges_and_set_wins_over_it(user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"topics": ["science"], "preferred_time": "05:00"}))
    configure(user, "--file", str(path), "--set", "preferred_time=05:30")
    assert stored(user) == ({**START, "topics": ["science"], "preferred_time": "05:30"}, True)


def test_replace_drops_every_other_key(user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    configure(user, "--replace", "--set", 'topics=["science"]')
    assert stored(user) == ({"topics": ["science"]}, True)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"preferred_time": "05:00"}))
    configure(user, "--replace", "--file", str(path), "--disable")
    assert stored(user) == ({"preferred_time": "05:00"}, False)
    configure(user, "--replace")  # alone: back to every default, flag unchanged
    assert stored(user) == ({}, False)


def test_refused_combinations_and_invalid_results_store_nothing(user) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ["--replace", "--unset", "topics"],
        ["--set", 'topics=["science"]', "--unset", "topics"],
        ["--set", "topics=[]"],  # the merged result is invalid
        ["--unset", "topics", "--set", "frequency=monthly"],
    ):
        result = runner.invoke(cli, ["configure", user.email, PLUGIN, *args])
        assert result.exit_code == 2, (args, result.output)
        assert stored(user) == (START, True), args


def test_python_api_has_the_same_semantics(user) -> None:  # type: ignore[no-untyped-def]
    api.configure_plugin(user.id, PLUGIN, {"preferred_time": "11:00"})
    assert stored(user) == ({**START, "preferred_time": "11:00"}, True)
    api.configure_plugin(user.id, PLUGIN, None, unset=["preferred_time"])
    assert stored(user) == ({"topics": ["sports"], "frequency": "weekly"}, True)
    api.set_enabled(user.id, PLUGIN, False)
    assert stored(user) == ({"topics": ["sports"], "frequency": "weekly"}, False)
    api.replace_config(user.id, PLUGIN, {"topics": ["science"]}, enabled=True)
    assert stored(user) == ({"topics": ["science"]}, True)
    with pytest.raises(SettingsValidationError):
        api.configure_plugin(user.id, PLUGIN, {"topics": ["cooking"]})
    assert stored(user) == ({"topics": ["science"]}, True)
