"""The offline model's writing: deterministic, extractive answers built from the prompt alone.

The offline LLM (:mod:`app.execution.offline_llm`) hands this module the text
of the task it was given. Article blocks in the prompt look like::

    [1] Headline
    URL: https://example.com/story
    Topic: technology
    Summary: One or more sentences.

Guarantees: :func:`answer` is a pure function of its input. A prompt that
carries stories or a ``Topics:`` line is a digest prompt: when it asks for
markdown it writes a digest (a heading per topic; headline, link and
one-sentence summary per story); otherwise it selects the stories matching the
prompt's ``Topics:`` line (at most the prompt's "at most N") and returns them
in the block format above with one-sentence summaries. With no stories it
says so. Any other prompt is answered from its task (:func:`answer_task`): a
markdown report (a section per point) or a bullet list when the task's
expected output asks for one, built from the context it was given (earlier
tasks' answers) or else from the task's own sentences; otherwise the first
sentence of the task.
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
_TASK_ONLY = re.compile(
    r"Current Task:\s*(.*?)(?=\nThis is the expected criteria|\nThis is the context|\n\s*\n|$)", re.DOTALL
)
_CRITERIA = re.compile(
    r"This is the expected criteria for your final answer:\s*(.*?)(?=\nyou MUST|\nThis is the context|$)",
    re.DOTALL,
)
#: How CrewAI introduces earlier tasks' output in a prompt.
CONTEXT_MARKER = "This is the context you're working with:"
_CONTEXT = re.compile(
    re.escape(CONTEXT_MARKER) + r"\s*(.*?)(?=\nProvide your complete response|\nBegin!|$)", re.DOTALL
)
_REPORT = re.compile(r"\b(report|sections?)\b", re.IGNORECASE)
_LIST = re.compile(r"\b(list|bullet)", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)\s*$")
_HEADING = re.compile(r"^\s*#+\s+")
MAX_POINTS = 10
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


def _part(pattern: re.Pattern[str], prompt: str, *, flat: bool = True) -> str:
    match = pattern.search(prompt)
    if not match:
        return ""
    return " ".join(match.group(1).split()) if flat else match.group(1).strip()


def _sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()] if flat else []


def _points(context: str, task: str) -> list[str]:
    """What to write about: the context's bullets or lines, else the task's sentences."""
    points = []
    for line in context.splitlines():
        if not line.strip() or _HEADING.match(line):
            continue
        bullet = _BULLET.match(line)
        points.append(bullet.group(1) if bullet else line.strip())
    if len(points) <= 1:
        points = _sentences(points[0] if points else "")
    if len(points) < 2:
        points += [s for s in _sentences(task) if s not in points]
    return points[:MAX_POINTS]


def task_sentences(prompt: str) -> list[str]:
    """Sentences of the task in ``prompt`` and its context, for answers built from a schema."""
    task = _part(_TASK_ONLY, prompt)
    return _points(_part(_CONTEXT, prompt, flat=False), task) if task else _sentences(prompt)[:MAX_POINTS]


def answer_task(prompt: str) -> str:
    """An answer written from the task in ``prompt`` (no stories; see the module docstring)."""
    task = _part(_TASK_ONLY, prompt)
    if not task:
        return first_sentence(prompt) or "Done."
    criteria = _part(_CRITERIA, prompt)
    points = _points(_part(_CONTEXT, prompt, flat=False), task)
    title = first_sentence(task, limit=120).rstrip(".")
    if _REPORT.search(criteria) and _MARKDOWN.search(criteria):
        lines = [f"# {title}", ""]
        for point in points:
            lines += [f"## {first_sentence(point, limit=80).rstrip('.')}", "", point, ""]
        return "\n".join(lines).rstrip() + "\n"
    if _LIST.search(criteria):
        return "\n".join(f"- {point}" for point in points)
    return first_sentence(task) or "Done."


def answer(prompt: str) -> str:
    """The offline model's answer to ``prompt`` (see the module docstring)."""
    stories = parse_stories(prompt)
    topics = requested_topics(prompt)
    if not stories and not topics:
        return answer_task(prompt)
    limit_match = _AT_MOST.search(prompt)
    limit = int(limit_match.group(1)) if limit_match else None
    chosen = select(stories, topics, limit)
    if _MARKDOWN.search(prompt):
        unavailable_match = _UNAVAILABLE.search(prompt)
        unavailable = unavailable_match.group(1) if unavailable_match else ""
        return write_digest(chosen, topics, None if unavailable.lower() in _NONE_WORDS else unavailable)
    return write_selection(chosen, topics)
