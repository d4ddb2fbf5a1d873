"""daily-news-digest: read the feeds, keep the reader's topics, and have two agents write a digest.

The framework calls :func:`build_crew` once per run (see docs/writing-plugins.md).
Feeds are read here, in plain Python, before the crew starts (URLs only through
``ctx.fetch``, the framework's safe fetcher): the researcher
agent chooses among the matching articles and the writer agent turns its
choice into a markdown digest. Unreadable feeds are listed in the run's report
and in the digest; no matching article still makes a digest that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .feeds import FEED_HEADERS, collect, format_articles, format_sources

if TYPE_CHECKING:
    from app.execution.contract import CrewContext, CrewPlan

#: Seconds one feed may take in total (lookup, connect, redirects, body); FETCH_DEADLINE_SECONDS caps it.
FEED_DEADLINE_SECONDS = 10.0
#: ``bundled:NAME`` feeds are files in this folder of the plugin.
BUNDLED_FEEDS_DIR = "feeds"
#: How many matching articles the researcher chooses from, per story wanted.
CANDIDATES_PER_STORY = 4


def build_crew(ctx: CrewContext) -> CrewPlan:
    """The digest crew and its inputs, from the run's settings."""
    topics = [str(t) for t in ctx.settings["topics"]]
    max_items = int(ctx.settings.get("max_items", 5))
    found = collect(
        ctx.settings["feeds"],
        topics=topics,
        limit=max_items * CANDIDATES_PER_STORY,
        fetch=lambda url: ctx.fetch(url, headers=FEED_HEADERS, deadline_seconds=FEED_DEADLINE_SECONDS),
        resolve_bundled=lambda name: ctx.resolve(f"{BUNDLED_FEEDS_DIR}/{name}"),
        stopped=ctx.stopped,
    )
    inputs = {
        "topics": ", ".join(topics),
        "max_items": max_items,
        "articles": format_articles(found.articles) or "(no articles matched the topics)",
        "unavailable_feeds": format_sources(f.source for f in found.feeds if not f.ok) or "none",
    }
    report = {
        "feeds": [
            {"source": f.source, "ok": f.ok, "entries": f.entries, "problem": f.problem} for f in found.feeds
        ],
        "feed_problems": found.problems,
        "articles_considered": len(found.articles),
    }
    return ctx.plan(ctx.crew_from_yaml(), inputs, report=report)
