"""Validation agrees with storage: what validation accepts, PostgreSQL stores; what it cannot, is refused.

NUL, lone surrogates, NaN and ±Infinity anywhere in values or keys; a trailing
newline past ``$``; every declared ``format``; a remote ``$ref`` never fetched.
Accepted values are then really saved to PostgreSQL to prove the agreement.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from app import api
from app.db.engine import session_scope
from app.errors import PluginError, SettingsValidationError
from app.plugins.registry import discover, load_plugin
from app.plugins.settings import ecma_pattern, validate_settings
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT, VALID_SCHEMA, unique_email

DIGEST = discover(ROOT / "plugins").plugins["daily-news-digest"].spec


def _issues(spec: Any, settings: Any) -> list[tuple[str, str]]:
    with pytest.raises(SettingsValidationError) as caught:
        validate_settings(spec, settings)
    return [(e.path, e.message) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        ({"topics": ["sci\x00ence"]}, "/topics/0", "NUL"),
        ({"feeds": ["https://a.example/\ud800"]}, "/feeds/0", "surrogate"),
        ({"max_items": math.nan}, "/max_items", "NaN"),
        ({"max_items": math.inf}, "/max_items", "inf"),
        ({"max_items": -math.inf}, "/max_items", "inf"),
        ({"x": {"deep": [1, {"y": "a\x00"}]}}, "/x/deep/1/y", "NUL"),
        ({"ke\x00y": 1}, "/ke\\x00y", "NUL"),
        ({"\udc80": 1}, "/\\udc80", "surrogate"),
        ({"a\nb": 1}, "/a\\nb", "control"),
    ],
)
def test_unstorable_values_are_refused_with_their_path(
    settings: dict[str, Any], path: str, words: str
) -> None:
    issues = _issues(DIGEST, settings)
    assert any(p == path and words.lower() in m.lower() for p, m in issues), issues
    for p, m in issues:  # every message is printable: no raw NUL or surrogate reaches a terminal
        (p + m).encode("utf-8")
        assert "\x00" not in p + m


def test_deep_and_huge_values_are_refused_without_echoing_them() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    assert any("nested deeper" in m for _p, m in _issues(DIGEST, {"topics": deep}))
    huge = "y" * 10_000_000
    issues = _issues(DIGEST, {"preferred_time": huge})
    assert all(len(m) < 400 for _p, m in issues), [len(m) for _p, m in issues]
    issues = _issues(DIGEST, {"preferred_time": "z" * 100_000})  # under the size cap: a schema error
    assert issues and all(len(m) < 400 for _p, m in issues)


def test_trailing_newline_is_not_a_match() -> None:
    assert [p for p, _m in _issues(DIGEST, {"preferred_time": "07:30\n"})] == ["/preferred_time"]
    assert validate_settings(DIGEST, {"preferred_time": "07:30"})["preferred_time"] == "07:30"
    assert [p for p, _m in _issues(DIGEST, {"feeds": ["https://a.example/feed\n"]})] == ["/feeds/0"]


def test_ecma_pattern_translation() -> None:
    assert ecma_pattern(r"^\d{2}:\d{2}$") == r"^[0-9]{2}:[0-9]{2}\Z"
    assert ecma_pattern(r"[$]\$$") == r"[$]\$\Z"  # $ in a class and an escaped $ stay literal
    assert ecma_pattern(r"[]$]") == r"[]$]"
    assert ecma_pattern(r"[\d-]") == r"[0-9-]"


FORMATS = [
    ("uri", "https://example.com/a", "not a uri"),
    ("uri-reference", "/relative/path", "\\\\ bad"),
    ("iri", "https://example.com/é", "no scheme"),
    ("date-time", "2026-05-01T07:30:00Z", "yesterday"),
    ("date", "2026-05-01", "2026-13-01"),
    ("time", "07:30:00Z", "25:00"),
    ("duration", "P1DT2H", "P1X"),
    ("email", "a@example.com", "nope"),
    ("hostname", "example.com", "-bad-.com"),
    ("idn-hostname", "bücher.example", "-x-"),
    ("ipv4", "192.0.2.1", "1.2.3"),
    ("ipv6", "2001:db8::1", "2001:::1"),
    ("uuid", "12345678-1234-5678-1234-567812345678", "x"),
    ("json-pointer", "/a/b", "a/b"),
    ("regex", "^a+$", "(unclosed"),
    ("uri-template", "https://example.com/{id}", "https://example.com/{id"),
]


@pytest.mark.parametrize(("fmt", "good", "bad"), FORMATS)
def test_every_declared_format_is_checked(make_plugin, fmt: str, good: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    schema = copy.deepcopy(VALID_SCHEMA)
    schema["properties"]["value"] = {"type": "string", "format": fmt}
    plugin = load_plugin(make_plugin("fmt-plugin", schema=schema))
    assert validate_settings(plugin.spec, {"value": good})["value"] == good
    assert [p for p, _m in _issues(plugin.spec, {"value": bad})] == ["/value"]


def test_unknown_format_is_a_plugin_problem(make_plugin) -> None:  # type: ignore[no-untyped-def]
    schema = copy.deepcopy(VALID_SCHEMA)
    schema["properties"]["value"] = {"type": "string", "format": "colour"}
    with pytest.raises(PluginError) as caught:
        load_plugin(make_plugin("fmt-plugin", schema=schema))
    (problem,) = caught.value.problems
    assert problem.key == "/properties/value/format" and "unknown format 'colour'" in problem.message


@pytest.mark.parametrize(
    "ref", ["https://json-schema.example.invalid/remote.json", "other-file.json", "#/$defs/missing"]
)
def test_a_ref_that_would_need_a_download_is_a_plugin_problem(make_plugin, ref: str) -> None:  # type: ignore[no-untyped-def]
    schema = copy.deepcopy(VALID_SCHEMA)
    schema["properties"]["value"] = {"$ref": ref}
    with pytest.raises(PluginError) as caught:
        load_plugin(make_plugin("ref-plugin", schema=schema))
    (problem,) = caught.value.problems
    assert problem.key == "/properties/value/$ref" and ref in problem.message
    assert problem.file.endswith("settings.schema.json")


def test_local_refs_and_the_metaschema_still_work(make_plugin) -> None:  # type: ignore[no-untyped-def]
    schema = copy.deepcopy(VALID_SCHEMA)
    schema["$defs"] = {"hhmm": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}}
    schema["properties"]["preferred_time"] = {"$ref": "#/$defs/hhmm"}
    plugin = load_plugin(make_plugin("ref-plugin", schema=schema))
    assert validate_settings(plugin.spec, {"preferred_time": "07:30"})
    assert [p for p, _m in _issues(plugin.spec, {"preferred_time": "07:30\n"})] == ["/preferred_time"]


def test_what_validation_accepts_postgres_stores(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    user = api.create_user(unique_email())
    odd = {"topics": ["science"], "feeds": ["https://a.example/é?q=ü&z=%00"], "max_items": 20}
    info = api.configure_plugin(user.id, "daily-news-digest", odd)
    assert api.get_config(user.id, "daily-news-digest").settings == info.settings == odd
    for bad in ({"feeds": ["https://a.example/\x00"]}, {"max_items": math.nan}):
        with pytest.raises(SettingsValidationError):
            api.configure_plugin(user.id, "daily-news-digest", bad)
        with pytest.raises(SettingsValidationError):
            api.trigger_run(user.id, "daily-news-digest", bad)
    assert api.get_config(user.id, "daily-news-digest").settings == odd
