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
