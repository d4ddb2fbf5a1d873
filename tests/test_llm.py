"""The LLM provider: model selection, the offline model's answers and its token counting."""

from __future__ import annotations

import pytest

from app.config import get_settings
from app.errors import ConfigurationError
from app.execution import extractive
from app.execution.llm import make_llm
from app.llm_config import OFFLINE_MODEL, llm_problem

ARTICLES = """Choose the stories for today's digest.
Topics: science, sports
Pick at most 3 stories that match the topics.

Articles:

[1] Telescope finds water
URL: https://x.test/1
Topic: science
Summary: Astronomers found water vapour. It is far away.

[2] Cup final decided on penalties
URL: https://x.test/2
Topic: sports
Summary: The underdogs won. Fans celebrated.

[3] Coral reefs recover
URL: https://x.test/3
Topic: science
Summary: Reefs regrew within four years.

[4] Another science story
URL: https://x.test/4
Topic: science
Summary: More science.

[5] Chip news
URL: https://x.test/5
Topic: technology
Summary: Not wanted.
"""


def test_selection_keeps_topics_limit_and_gives_every_topic_a_turn() -> None:
    answer = extractive.answer(ARTICLES)
    stories = extractive.parse_stories(answer)
    # At most 3; sports is not crowded out by the earlier science stories; prompt order kept.
    assert [s.url for s in stories] == ["https://x.test/1", "https://x.test/2", "https://x.test/3"]
    assert stories[0].summary == "Astronomers found water vapour."
    assert "Chip news" not in answer


def test_digest_is_markdown_grouped_by_topic() -> None:
    selection = extractive.answer(ARTICLES)
    prompt = (
        "Write the digest in markdown.\nTopics: science, sports\nUnavailable feeds: http://down.test/feed\n\n"
        + selection
    )
    digest = extractive.answer(prompt)
    assert digest.startswith("# Your news digest\n")
    assert digest.index("## Science") < digest.index("## Sports")
    assert "- **[Telescope finds water](https://x.test/1)** — Astronomers found water vapour." in digest
    assert digest.rstrip().endswith("_Some feeds could not be read: http://down.test/feed._")


def test_no_stories_say_so() -> None:
    assert (
        extractive.answer("Topics: politics\nArticles:\n(none)")
        == "No articles matched the topics: politics."
    )
    digest = extractive.answer("Write markdown.\nTopics: politics\nUnavailable feeds: none\n")
    assert "No stories matched your topics today." in digest
    assert "could not be read" not in digest


def test_a_prompt_without_stories_gets_its_task_back() -> None:
    assert extractive.answer("\nCurrent Task: Repeat the word hello. Then stop.\n\nCriteria") == (
        "Repeat the word hello."
    )


def test_offline_llm_answers_in_crewai_format_deterministically_and_counts_tokens() -> None:
    llm = make_llm()
    assert llm.model == OFFLINE_MODEL
    messages = [{"role": "system", "content": "You are a researcher."}, {"role": "user", "content": ARTICLES}]
    first = llm.call(messages)
    assert first.startswith("Thought: I now know the final answer\nFinal Answer: [1] Telescope finds water")
    assert llm.call(messages) == first
    usage = llm.get_token_usage_summary()
    assert usage.successful_requests == 2
    assert usage.prompt_tokens == 2 * (len(ARTICLES.split()) + 4)
    assert usage.completion_tokens == 2 * len(first.split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_each_run_gets_a_fresh_llm() -> None:
    first, second = make_llm(), make_llm()
    assert first is not second
    first.call("hello there")
    assert second.get_token_usage_summary().total_tokens == 0


def test_configured_model_uses_crewai_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_SIP_LLM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    get_settings.cache_clear()
    llm = make_llm()
    assert type(llm).__module__.startswith("crewai.")
    assert (llm.provider, llm.model) == ("openai", "gpt-4o-mini")


def test_offline_delay_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_SIP_OFFLINE_LLM_DELAY", "0.25")
    get_settings.cache_clear()
    assert make_llm().delay_seconds == 0.25


def test_production_without_a_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "a-real-secret-value-for-the-test")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:a-real-password")
    get_settings.cache_clear()
    problem = llm_problem(get_settings())
    assert problem is not None and problem.startswith("FIRST_SIP_LLM_MODEL is not set")
    with pytest.raises(ConfigurationError, match="FIRST_SIP_LLM_MODEL is not set"):
        make_llm()
