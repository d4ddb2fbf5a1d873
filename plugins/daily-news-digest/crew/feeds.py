"""Reading the digest's feeds and keeping the articles that match the reader's topics.

Guarantees: :func:`collect` never raises for a bad feed. Each source is either
an http(s) URL, read only through the framework's fetcher (``ctx.fetch``:
public addresses only, a total deadline, a size cap), or a file bundled with
the plugin (``bundled:NAME``, confined to the plugin's ``feeds`` folder). An
unreachable, refused, failing or malformed feed becomes a :class:`FeedReport`
with the fetcher's reason, and the articles come from the others.

feedparser only ever gets the downloaded bytes as a stream: handed a string or
bytes, it would open a body that spells a path (``/etc/passwd``) or a URL itself.

Article titles and summaries are plain text (:func:`app.safe_text.plain_text`:
entities decoded before tags are stripped, by nh3); an article's link is an
http(s) URL or empty: an article whose link is anything else (``javascript:``,
``data:``, relative) keeps its title and loses the link. :func:`format_articles`
escapes markdown, so nothing from a feed becomes a link or HTML in the digest.
An article is kept when one of its categories or words matches a topic; each
kept article carries the first matching topic (in the reader's order).
Articles are de-duplicated by link (by title when they have none).
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import feedparser

from app.errors import PermanentError
from app.net.errors import FetchError
from app.safe_text import markdown_text, plain_text, safe_link

MAX_FEED_BYTES = 5_000_000
MAX_SUMMARY_CHARS = 600
MAX_TITLE_CHARS = 200
USER_AGENT = "first-sip-daily-news-digest/1.0 (+https://github.com/first-sip)"
FEED_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
}
BUNDLED_PREFIX = "bundled:"


class Fetched(Protocol):
    """What ``ctx.fetch`` returns (:class:`app.net.fetch.FetchResponse`), as far as feeds need it."""

    url: str
    content: bytes


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


def read_source(
    source: str, *, fetch: Callable[[str], Fetched], resolve_bundled: Callable[[str], Path]
) -> tuple[bytes, str]:
    """The raw bytes of one feed and the URL they came from (``""`` for a bundled feed)."""
    if source.startswith(BUNDLED_PREFIX):
        path = resolve_bundled(source[len(BUNDLED_PREFIX) :])
        if not path.is_file():
            raise FileNotFoundError(source)
        if path.stat().st_size > MAX_FEED_BYTES:
            raise ValueError(f"feed is larger than {MAX_FEED_BYTES} bytes")
        return path.read_bytes(), ""
    response = fetch(source)  # refuses anything but public http(s); bounded in time and size
    return response.content, response.url


def parse_entries(data: bytes, *, base_url: str = "") -> tuple[str, list[Any]]:
    """The feed's title and entries; ValueError if ``data`` is not a readable RSS/Atom feed.

    ``base_url`` (where the feed came from) resolves relative links in it.
    """
    headers = {"content-location": base_url} if base_url else None
    parsed = feedparser.parse(io.BytesIO(data), response_headers=headers)  # a stream: never opened as a path
    reason = parsed.get("bozo_exception")
    if not parsed.get("version") or (parsed.get("bozo") and not parsed.entries):
        detail = f": {type(reason).__name__}" if reason else ""
        raise ValueError(f"malformed feed (not RSS or Atom){detail}")
    return plain_text(parsed.feed.get("title", ""), limit=MAX_TITLE_CHARS), list(parsed.entries)


def clean_text(value: Any, *, limit: int = MAX_SUMMARY_CHARS) -> str:
    """Plain text from a feed's HTML snippet (see :func:`app.safe_text.plain_text`)."""
    return plain_text(value, limit=limit)


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
    if isinstance(exc, FetchError):
        return exc.reason  # worded by the fetcher: safe to show, reveals nothing about internal hosts
    if isinstance(exc, FileNotFoundError | IsADirectoryError):
        return "no such bundled feed"
    if isinstance(exc, PermanentError):  # ctx.resolve refused a name leaving the feeds folder
        return "not a bundled feed name"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"unreadable ({type(exc).__name__})"


def collect(
    sources: Iterable[str],
    *,
    topics: list[str],
    limit: int,
    fetch: Callable[[str], Fetched],
    resolve_bundled: Callable[[str], Path],
    stopped: threading.Event | None = None,
) -> Collection:
    """Read every source; keep at most ``limit`` matching articles (feed order, no duplicate links)."""
    found = Collection()
    seen: set[str] = set()
    for source in sources:
        if stopped is not None and stopped.is_set():
            break  # the run was given up on: stop fetching
        try:
            data, url = read_source(source, fetch=fetch, resolve_bundled=resolve_bundled)
            title, entries = parse_entries(data, base_url=url)
        except Exception as exc:  # one bad feed never stops the digest
            found.feeds.append(FeedReport(source, ok=False, problem=_problem(exc)))
            continue
        found.feeds.append(FeedReport(source, ok=True, entries=len(entries)))
        for entry in entries:
            link = safe_link(entry.get("link")) or ""
            headline = clean_text(entry.get("title", ""), limit=MAX_TITLE_CHARS) or "(untitled)"
            key = link or headline
            topic = match_topic(entry, topics)
            if topic is None or key in seen or len(found.articles) >= limit:
                continue
            seen.add(key)
            found.articles.append(
                Article(
                    title=headline,
                    link=link,
                    summary=clean_text(entry.get("summary", "")),
                    topic=topic,
                    source=title or source,
                )
            )
    return found


def format_articles(articles: list[Article]) -> str:
    """Articles as numbered blocks (headline, URL, topic, source, summary) for the researcher.

    Feed text is markdown-escaped here: what the model copies into the digest renders as text.
    """
    blocks = []
    for number, a in enumerate(articles, 1):
        blocks.append(
            f"[{number}] {markdown_text(a.title)}\nURL: {a.link}\nTopic: {a.topic}\n"
            f"Source: {markdown_text(a.source)}\nSummary: {markdown_text(a.summary)}"
        )
    return "\n\n".join(blocks)


def format_sources(sources: Iterable[str]) -> str:
    """Feed sources (URLs from the reader's settings) as one markdown-escaped, comma-separated line."""
    return ", ".join(markdown_text(plain_text(s)) for s in sources)
