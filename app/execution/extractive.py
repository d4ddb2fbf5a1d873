"""The offline model's writing: deterministic, extractive answers built from the prompt alone.

The offline LLM (:mod:`app.execution.offline_llm`) hands this module the text
of the task it was given. Article blocks in the prompt look like::

    [1] Headline
    URL: https://example.com/story
    Topic: technology
    Summary: One or more sentences.

Guarantees: :func:`answer` is a pure function of its input. When the prompt
asks for markdown it writes a digest (a heading per topic; headline, link and
one-sentence summary per story); otherwise it selects the stories matching the
prompt's ``Topics:`` line (at most the prompt's "at most N") and returns them
in the block format above with one-sentence summaries. With no stories it
says so. A prompt with neither stories nor topics gets the first sentence of
its task back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ITEM_HEAD = re.compile(r"^\[(\d+)\]\s+(\S.*?)\s*$")
_FIELD = re.compile(r"^\s*(URL|Link|Topic|Summary|Source)\s*:\s*(.*?)\s*$", re.IGNORECASE)
_TOPICS = re.compile(r"^\s*Topics\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_AT_MOST = re.compile(r"\bat most (\d+)\b", re.IGNORECASE)
_UNAVAILABLE = re.compile(r"^\s*Unavailable feeds\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_MARKDOWN = re.compile(r"\bmarkdown\b", re.IGNORECASE)
_TASK = re.compile(r"Current Task:\s*(.*?)(?:\n\s*\n|$)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NONE_WORDS = {"", "none", "(none)", "n/a", "-"}


@dataclass(frozen=True)
class Story:
    """One article found in a prompt."""

    headline: str
    url: str
    topic: str
    summary: str
    source: str = ""


def first_sentence(text: str, *, limit: int = 240) -> str:
    """The first sentence of ``text`` (whitespace collapsed), cut at ``limit`` characters."""
    flat = " ".join(text.split())
    sentence = _SENTENCE_END.split(flat, maxsplit=1)[0] if flat else ""
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rstrip() + "…"
    return sentence


def parse_stories(text: str) -> list[Story]:
    """Every article block in ``text``, in order, without duplicates (by URL, else headline)."""
    stories: list[Story] = []
    seen: set[str] = set()
    current: dict[str, str] | None = None

    def flush() -> None:
        if current is None:
            return
        key = (current.get("url") or current["headline"]).lower()
        if key not in seen:
            seen.add(key)
            stories.append(
                Story(
                    headline=current["headline"],
                    url=current.get("url") or current.get("link", ""),
                    topic=current.get("topic", "").lower(),
                    summary=current.get("summary", ""),
                    source=current.get("source", ""),
                )
            )

    for line in text.splitlines():
        head = _ITEM_HEAD.match(line)
        if head:
            flush()
            current = {"headline": head.group(2)}
            continue
        field = _FIELD.match(line)
        if current is not None and field:
            current[field.group(1).lower()] = field.group(2)
        elif current is not None and not line.strip():
            flush()
            current = None
    flush()
    return stories


def requested_topics(text: str) -> list[str]:
    """The topics named on the prompt's first ``Topics:`` line, lower-cased."""
    match = _TOPICS.search(text)
    if not match:
        return []
    return [t.strip().lower() for t in re.split(r"[,;]", match.group(1)) if t.strip()]


def _matches(story: Story, topics: list[str]) -> bool:
    if not topics or story.topic in topics:
        return True
    words = set(re.findall(r"[a-z]+", f"{story.headline} {story.summary}".lower()))
    return any(topic in words for topic in topics)


def select(stories: list[Story], topics: list[str], limit: int | None) -> list[Story]:
    """Stories matching ``topics`` (all if none given), at most ``limit``, every topic represented.

    Topics take turns in the order given (round robin), each contributing its
    stories in prompt order, so one busy topic cannot crowd out the others.
    """
    matching = [s for s in stories if _matches(s, topics)]
    if not limit or len(matching) <= limit:
        return matching
    queues: dict[str, list[Story]] = {}
    for story in matching:
        queues.setdefault(story.topic if story.topic in topics else "", []).append(story)
    picked: list[Story] = []
    while len(picked) < limit:
        for topic in [*topics, ""]:
            if queues.get(topic) and len(picked) < limit:
                picked.append(queues[topic].pop(0))
    order = {id(s): i for i, s in enumerate(matching)}
    return sorted(picked, key=lambda s: order[id(s)])


def write_selection(stories: list[Story], topics: list[str]) -> str:
    """Stories in the block format, summaries cut to one sentence."""
    if not stories:
        return f"No articles matched the topics: {', '.join(topics) or 'any'}."
    blocks = []
    for number, s in enumerate(stories, 1):
        lines = [f"[{number}] {s.headline}", f"URL: {s.url}", f"Topic: {s.topic or 'general'}"]
        if s.source:
            lines.append(f"Source: {s.source}")
        lines.append(f"Summary: {first_sentence(s.summary) or s.headline}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_digest(stories: list[Story], topics: list[str], unavailable: str | None) -> str:
    """A markdown digest: one section per topic, headline link and one sentence per story."""
    lines = ["# Your news digest", ""]
    if topics:
        lines += [f"Topics: {', '.join(topics)}", ""]
    if not stories:
        lines.append("No stories matched your topics today. Check back tomorrow, or follow more topics.")
    order = topics + sorted({s.topic or "general" for s in stories} - set(topics))
    for topic in order:
        group = [s for s in stories if (s.topic or "general") == topic]
        if not group:
            continue
        lines += [f"## {topic.title()}", ""]
        for s in group:
            headline = f"[{s.headline}]({s.url})" if s.url else s.headline
            lines.append(f"- **{headline}** — {first_sentence(s.summary) or s.headline}")
        lines.append("")
    if unavailable:
        lines.append(f"_Some feeds could not be read: {unavailable}._")
    return "\n".join(lines).rstrip() + "\n"


def answer(prompt: str) -> str:
    """The offline model's answer to ``prompt`` (see the module docstring)."""
    stories = parse_stories(prompt)
    topics = requested_topics(prompt)
    limit_match = _AT_MOST.search(prompt)
    limit = int(limit_match.group(1)) if limit_match else None
    chosen = select(stories, topics, limit)
    if _MARKDOWN.search(prompt):
        unavailable_match = _UNAVAILABLE.search(prompt)
        unavailable = unavailable_match.group(1) if unavailable_match else ""
        return write_digest(chosen, topics, None if unavailable.lower() in _NONE_WORDS else unavailable)
    if stories or topics:
        return write_selection(chosen, topics)
    task = _TASK.search(prompt)
    return first_sentence(task.group(1) if task else prompt) or "Done."
