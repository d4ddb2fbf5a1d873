"""Settings validation: all errors at once with JSON-pointer paths, defaults applied."""

from __future__ import annotations

import pytest

from app.errors import SettingsValidationError
from app.plugins.registry import discover, load_plugin
from app.plugins.settings import validate_settings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def digest():  # type: ignore[no-untyped-def]
    return discover(ROOT / "plugins").plugins["daily-news-digest"].spec


def test_defaults_applied_in_order(digest) -> None:  # type: ignore[no-untyped-def]
    # schema default topics=["technology"], default_config topics=["technology","science"]
    effective = validate_settings(digest, {})
    assert effective["topics"] == ["technology", "science"]  # default_config beats schema default
    assert effective["max_items"] == 5  # schema default
    assert effective["feeds"] == ["bundled:sample-feed.xml"]
    effective = validate_settings(digest, {"topics": ["sports"], "preferred_time": "07:30"})
    assert effective["topics"] == ["sports"] and effective["preferred_time"] == "07:30"


def test_input_not_mutated(digest) -> None:  # type: ignore[no-untyped-def]
    given = {"topics": ["sports"]}
    validate_settings(digest, given)
    assert given == {"topics": ["sports"]}


def test_all_errors_reported_with_paths(digest) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsValidationError) as exc:
        validate_settings(
            digest,
            {
                "frequency": "hourly",
                "preferred_time": "25:00",
                "topics": ["technology", "cooking"],
                "feeds": ["ftp://example.com/feed"],
                "colour": "red",
            },
        )
    errors = {(e.path, e.message.split(" ")[0]) for e in exc.value.errors}
    paths = {e.path for e in exc.value.errors}
    assert paths == {"/frequency", "/preferred_time", "/topics/1", "/feeds/0", ""}
    assert any("Additional properties are not allowed ('colour'" in e.message for e in exc.value.errors)
    assert ("/frequency", "'hourly'") in errors
    text = str(exc.value)
    assert "daily-news-digest" in text and "/topics/1: 'cooking' is not one of" in text


@pytest.mark.parametrize(
    "settings, path, fragment",
    [
        ({"topics": []}, "/topics", "should be non-empty"),
        ({"topics": ["technology"] * 6}, "/topics", "is too long"),
        ({"topics": ["science", "science"]}, "/topics", "non-unique"),
        ({"preferred_time": "6:00"}, "/preferred_time", "does not match"),
        ({"max_items": 0}, "/max_items", "less than the minimum"),
        ({"max_items": "5"}, "/max_items", "is not of type 'integer'"),
        ({"feeds": ["bundled:../../etc/passwd"]}, "/feeds/0", "does not match"),
        ({"weekday": "someday"}, "/weekday", "is not one of"),
    ],
)
def test_draft_2020_12_keywords(digest, settings, path, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsValidationError) as exc:
        validate_settings(digest, settings)
    assert any(e.path == path and fragment in e.message for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize("bad", [[], "x", 3, True])
def test_settings_must_be_an_object(digest, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsValidationError) as exc:
        validate_settings(digest, bad)
    assert "must be a JSON object" in str(exc.value)


def test_additional_properties_false_honoured(make_plugin) -> None:  # type: ignore[no-untyped-def]
    plugin = load_plugin(make_plugin("strict"))
    with pytest.raises(SettingsValidationError) as exc:
        validate_settings(plugin.spec, {"extra": 1})
    assert [e.path for e in exc.value.errors] == [""]
    assert "'extra' was unexpected" in exc.value.errors[0].message


def test_required_key_supplied_by_defaults_is_fine(make_plugin) -> None:  # type: ignore[no-untyped-def]
    plugin = load_plugin(make_plugin("defaults"))
    assert validate_settings(plugin.spec, None) == {
        "frequency": "daily",
        "preferred_time": "06:00",
        "topics": ["science"],
    }


def test_pointer_escaping(make_plugin) -> None:  # type: ignore[no-untyped-def]
    schema = {
        "type": "object",
        "properties": {"a/b~c": {"type": "integer"}},
    }
    plugin = load_plugin(make_plugin("escape", schema=schema, default_config={}))
    with pytest.raises(SettingsValidationError) as exc:
        validate_settings(plugin.spec, {"a/b~c": "x"})
    assert exc.value.errors[0].path == "/a~1b~0c"


def test_a_plugins_spec_and_fingerprint_are_computed_once() -> None:
    plugin = discover(ROOT / "plugins").plugins["daily-news-digest"]
    assert plugin.spec is plugin.spec  # the worker validates every run against it: not rebuilt per access
    assert plugin.spec.validator is plugin.validator
    assert "schema_fingerprint" not in vars(plugin)
    fingerprint = plugin.schema_fingerprint
    assert vars(plugin)["schema_fingerprint"] == fingerprint
