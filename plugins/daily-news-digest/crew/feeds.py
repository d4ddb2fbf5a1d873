"""Reading the digest's feeds and keeping the articles that match the reader's topics.

Guarantees: :func:`collect` never raises for a bad feed. Each source is read
over http(s) with a timeout and a size cap, or from a file bundled with the
plugin (``bundled:NAME``); an unreachable, failing or malformed feed becomes a
:class:`FeedReport` with the reason, and the articles come from the others.
An article is kept when one of its categories or words matches a topic; each
kept article carries the first matching topic (in the reader's order).
Articles are de-duplicated by link.
"""

from __future__ import annotations

import html
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import feedparser

MAX_FEED_BYTES = 5_000_000
MAX_SUMMARY_CHARS = 600
USER_AGENT = "first-sip-daily-news-digest/1.0 (+https://github.com/first-sip)"
BUNDLED_PREFIX = "bundled:"

#: Words that put an article in a topic (besides the topic's own name).
TOPIC_KEYWORDS: dict[str, frozenset[str]] = {
    "technology": frozenset(
        {"tech", "software", "hardware", "ai", "computing", "internet", "gadgets", "chip", "chips",
         "robotics", "cybersecurity", "smartphone", "artificial intelligence"}
    ),
    "business": frozenset(
        {"economy", "markets", "market", "finance", "stocks", "earnings", "trade", "companies", "startup"}
    ),
    "science": frozenset(
        {"research", "space", "physics", "biology", "chemistry", "astronomy", "climate", "scientists"}
    ),
    "health": frozenset({"medicine", "medical", "disease", "vaccine", "fitness", "nutrition", "hospital"}),
    "politics": frozenset(
        {"election", "government", "policy", "parliament", "congress", "senate", "minister"}
    ),
    "sports": frozenset(
        {"sport", "football", "soccer", "basketball", "tennis", "olympics", "league", "cricket", "marathon"}
    ),
    "entertainment": frozenset(
        {"film", "movie", "music", "television", "tv", "celebrity", "streaming", "festival", "album"}
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Article:
    """One feed entry that matched a topic."""

    title: str
    link: str
    summary: str
    topic: str
    source: str


@dataclass
class FeedReport:
    """What happened when one feed was read."""

    source: str
    ok: bool
    entries: int = 0
    problem: str | None = None


@dataclass
class Collection:
    """Matching articles, and a report per feed."""

    articles: list[Article] = field(default_factory=list)
    feeds: list[FeedReport] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """``"<source>: <reason>"`` for every feed that could not be used."""
        return [f"{f.source}: {f.problem}" for f in self.feeds if not f.ok]


def read_source(source: str, *, resolve_bundled: Callable[[str], Path], timeout: float) -> bytes:
    """The raw bytes of one feed (``bundled:NAME`` or an http(s) URL)."""
    if source.startswith(BUNDLED_PREFIX):
        return resolve_bundled(source[len(BUNDLED_PREFIX) :]).read_bytes()
    if not re.match(r"^https?://", source, re.IGNORECASE):
        raise ValueError("only http(s) URLs and bundled: feeds are supported")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        source,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        data: bytes = response.read(MAX_FEED_BYTES + 1)
    if len(data) > MAX_FEED_BYTES:
        raise ValueError(f"feed is larger than {MAX_FEED_BYTES} bytes")
    return data


def parse_entries(data: bytes) -> tuple[str, list[Any]]:
    """The feed's title and entries; ValueError if ``data`` is not a readable RSS/Atom feed."""
    parsed = feedparser.parse(data)
    reason = parsed.get("bozo_exception")
    if not parsed.get("version") or (parsed.get("bozo") and not parsed.entries):
        detail = f": {reason}" if reason else ""
        raise ValueError(f"malformed feed (not RSS or Atom){detail}")
    return str(parsed.feed.get("title", "")), list(parsed.entries)


def clean_text(value: str, *, limit: int = MAX_SUMMARY_CHARS) -> str:
    """Plain text from a feed's HTML snippet: tags dropped, entities decoded, whitespace collapsed."""
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", value or "")).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def match_topic(entry: Any, topics: Iterable[str]) -> str | None:
    """The first of ``topics`` the entry belongs to (categories first, then words), or None."""
    topics = list(topics)
    categories = {str(tag.get("term", "")).strip().lower() for tag in entry.get("tags", []) or []}
    for topic in topics:
        if topic in categories or categories & TOPIC_KEYWORDS.get(topic, frozenset()):
            return topic
    text = f"{entry.get('title', '')} {clean_text(entry.get('summary', ''))}".lower()
    words = set(re.findall(r"[a-z]+", text))
    for topic in topics:
        keywords = TOPIC_KEYWORDS.get(topic, frozenset()) | {topic}
        if words & keywords or any(" " in k and k in text for k in keywords):
            return topic
    return None


def _problem(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"unreachable: HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    if isinstance(exc, FileNotFoundError):
        return "no such bundled feed"
    if isinstance(exc, OSError):  # timeouts, refused connections
        return f"unreachable: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def collect(
    sources: Iterable[str],
    *,
    topics: list[str],
    limit: int,
    resolve_bundled: Callable[[str], Path],
    timeout: float = 10.0,
    stopped: threading.Event | None = None,
) -> Collection:
    """Read every source; keep at most ``limit`` matching articles (feed order, no duplicate links)."""
    found = Collection()
    seen: set[str] = set()
    for source in sources:
        if stopped is not None and stopped.is_set():
            break  # the run was given up on: stop fetching
        try:
            data = read_source(source, resolve_bundled=resolve_bundled, timeout=timeout)
            title, entries = parse_entries(data)
        except Exception as exc:  # one bad feed never stops the digest
            found.feeds.append(FeedReport(source, ok=False, problem=_problem(exc)))
            continue
        found.feeds.append(FeedReport(source, ok=True, entries=len(entries)))
        for entry in entries:
            link = str(entry.get("link", "")).strip()
            key = link or str(entry.get("title", ""))
            topic = match_topic(entry, topics)
            if topic is None or key in seen or len(found.articles) >= limit:
                continue
            seen.add(key)
            found.articles.append(
                Article(
                    title=clean_text(entry.get("title", ""), limit=200) or "(untitled)",
                    link=link,
                    summary=clean_text(entry.get("summary", "")),
                    topic=topic,
                    source=title or source,
                )
            )
    return found


def format_articles(articles: list[Article]) -> str:
    """Articles as numbered blocks (headline, URL, topic, source, summary) for the researcher."""
    blocks = []
    for number, a in enumerate(articles, 1):
        blocks.append(
            f"[{number}] {a.title}\nURL: {a.link}\nTopic: {a.topic}\nSource: {a.source}\nSummary: {a.summary}"
        )
    return "\n\n".join(blocks)
