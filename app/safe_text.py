"""Text from outside (feeds, web pages, tool output) made safe for prompts and markdown digests.

Guarantees:

* :func:`plain_text` returns text with no HTML in it: entities are decoded
  *before* tags are removed (``&lt;script&gt;`` is a tag, not text that looks
  like one), repeatedly, so markup escaped several times is removed too; the
  contents of ``script``, ``style`` and similar elements are dropped; tags are
  removed by nh3 (the Ammonia HTML sanitizer), not by regular expressions;
  control and bidirectional-override characters are dropped; whitespace is
  collapsed to single spaces (so the text is one line).
* :func:`markdown_text` escapes every character that could start markdown
  markup inside a line (emphasis, code, links, images, autolinks, raw HTML,
  entities): the text renders as itself, never as a link or as HTML.
* :func:`safe_markdown` keeps markdown (headings, lists, emphasis, links) but
  nothing else: HTML is removed as by :func:`plain_text` (entities decoded
  first, script-like elements dropped with their content), every link, image,
  autolink and reference definition points to a :func:`safe_link` URL or is
  reduced to its text, and no ``<`` that could open a tag is left. For text
  written by a model from untrusted input (a digest), before it is stored.
* :func:`safe_link` returns an absolute ``http``/``https`` URL without
  credentials, with the characters that could end a markdown link
  percent-encoded, or None for anything else (``javascript:``, ``data:``,
  relative, malformed).
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import quote, urlsplit, urlunsplit

import nh3

#: Elements whose content is never text a reader should see.
DROP_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "template",
        "noscript",
        "iframe",
        "object",
        "embed",
        "svg",
        "math",
        "title",
        "textarea",
    }
)
#: Elements that separate words; nh3 keeps them (attribute-free) so they become spaces, not glue.
_BREAKING = frozenset(
    {
        "p",
        "br",
        "div",
        "li",
        "ul",
        "ol",
        "tr",
        "td",
        "th",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "hr",
    }
)
# Matches only nh3's own normalised output for the tags above (no attributes survive nh3).
_BREAKING_TAG = re.compile(r"</?(?:{})>".format("|".join(sorted(_BREAKING))))
_ROUNDS = 4
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>&~])")
_URL_SAFE = "/?#&=+%:@!$,;*~-._"
_HOST = re.compile(r"^[a-z0-9.-]+$|^\[[0-9a-f:.]+\]$")


def _strip_tags(text: str) -> str:
    cleaned = nh3.clean(text, tags=set(_BREAKING), attributes={}, clean_content_tags=set(DROP_WITH_CONTENT))
    return html.unescape(_BREAKING_TAG.sub(" ", cleaned))


def _visible(char: str) -> str:
    if char in _BIDI:
        return ""
    if unicodedata.category(char) == "Cc":
        return " "  # tabs and newlines too: they are collapsed with the other whitespace
    return char


def plain_text(value: object, *, limit: int | None = None) -> str:
    """The text ``value`` shows, as one line of plain text, cut to ``limit`` characters (with "…")."""
    text = "" if value is None else str(value)
    for _ in range(_ROUNDS):
        stripped = _strip_tags(html.unescape(text))
        if stripped == text:
            break
        text = stripped
    else:
        text = text.replace("<", " ").replace(">", " ")  # escaped deeper than we unwrap: no tag survives
    text = " ".join("".join(_visible(c) for c in text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def markdown_text(text: str) -> str:
    """``text`` with every markdown- and HTML-significant character backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)>")
# [text](url "title") and ![alt](url), url with one level of balanced parentheses, optional
# title; not after "\[" or "\]" (markdown for literal brackets).
_INLINE_LINK = re.compile(
    r"(?<!\\)(!?)\[((?:[^\]\n\\]|\\.)*)\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))*)>?"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^()\n]*\)))?\s*\)"
)
# A reference definition, also inside quotes and list items, its URL possibly on the next line.
_REFERENCE = re.compile(
    r"^((?:[ \t>]|[-*+][ \t]|\d{1,9}[.)][ \t])*\[[^\]\n]+\]:[ \t]*\n?[ \t]*)<?(\S*?)>?(?:[ \t].*)?$",
    re.MULTILINE,
)
# What is left of a link destination after the links above were rebuilt (nested brackets, parentheses).
_DESTINATION = re.compile(r"(?<!\\)\]\(\s*<?([^\s)>]*)")
_ESCAPED_LT = "\ue000"
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _line_visible(char: str) -> str:
    return char if char in "\n\t" else _visible(char)


def safe_markdown(value: object) -> str:
    """Markdown from ``value`` with no HTML and only http(s) links (see the module docstring)."""
    text = "" if value is None else str(value)

    def autolink(match: re.Match[str]) -> str:
        url = safe_link(match.group(1))
        return f"[{markdown_text(url)}]({url})" if url else ""

    text = _AUTOLINK.sub(autolink, text)  # before tags are removed: nh3 would take <https://...> for one
    # "\<" is markdown for a literal "<" (feeds.markdown_text writes it): not a tag, kept as it is.
    # Whoever writes the placeholder gets "\<" back: a literal "<" too.
    text = text.replace("\\<", _ESCAPED_LT)
    for _ in range(_ROUNDS):
        stripped = _strip_tags(html.unescape(text))
        if stripped == text:
            break
        text = stripped

    def inline(match: re.Match[str]) -> str:
        bang, label, url = match.group(1), match.group(2), safe_link(match.group(3))
        return f"{bang}[{label}]({url})" if url else label

    def reference(match: re.Match[str]) -> str:
        url = safe_link(match.group(2))
        return f"{match.group(1)}{url}" if url else ""

    text = _REFERENCE.sub(reference, _INLINE_LINK.sub(inline, text))
    # Any other "](" that opens an unsafe destination is no longer link syntax: "]\(".
    text = _DESTINATION.sub(lambda m: m.group() if safe_link(m.group(1)) else "]\\(" + m.group()[2:], text)
    text = _TAG_START.sub("&lt;", text)  # escaped deeper than we unwrap: no tag survives
    return "".join(_line_visible(c) for c in text).replace(_ESCAPED_LT, "\\<")


def safe_link(value: object) -> str | None:
    """``value`` as a safe absolute http(s) link for markdown, or None (see the module docstring)."""
    raw = "" if value is None else str(value).strip()
    if not raw or len(raw) > 2048 or any(c.isspace() or unicodedata.category(c) == "Cc" for c in raw):
        return None
    try:
        parts = urlsplit(raw)
        host = parts.hostname
        port = parts.port  # ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if not _HOST.match(parts.netloc.lower().rsplit(":", 1)[0] if port else parts.netloc.lower()):
        return None
    return urlunsplit(
        (
            parts.scheme.lower(),
            parts.netloc.lower(),
            quote(parts.path, safe=_URL_SAFE),
            quote(parts.query, safe=_URL_SAFE),
            quote(parts.fragment, safe=_URL_SAFE),
        )
    )
