"""Text from outside made safe: plain text with no HTML, markdown that renders as itself, safe links."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from app.safe_text import markdown_text, plain_text, safe_link, safe_markdown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("&lt;script&gt;alert(1)&lt;/script&gt;Hello", "Hello"),  # entities decoded before tags go
        ("&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;Hi", "Hi"),  # escaped twice
        ("&amp;amp;amp;lt;b&amp;amp;amp;gt;x", "x"),  # escaped four times
        ("<p>One.</p><p>Two.</p><br>Three", "One. Two. Three"),
        ("<style>p{}</style><iframe src=x>frame</iframe>Body", "Body"),
        ("<img src=x onerror=alert(1)>caption", "caption"),
        ("x < y &amp; z", "x < y & z"),
        ("AT&amp;T", "AT&T"),
        ("a\u202eb\tc\n\nd\x07e", "ab c d e"),  # bidi override dropped, controls become spaces
        (None, ""),
    ],
)
def test_plain_text(value: object, text: str) -> None:
    assert plain_text(value) == text


def test_plain_text_is_cut_with_an_ellipsis() -> None:
    assert plain_text("word " * 100, limit=12) == "word word w…"


@pytest.mark.parametrize(
    "text",
    [
        "[click](javascript:alert(1))",
        "![x](http://evil.example/p.png)",
        "<script>alert(1)</script>",
        "<https://evil.example/>",
        "&lt;b&gt; *em* **strong** `code` ~~gone~~ _u_",
        "\\[escaped\\](http://x.example)",
    ],
)
def test_markdown_text_renders_as_itself(text: str) -> None:
    html = MarkdownIt("commonmark").render(markdown_text(text))
    assert "<a " not in html and "<img" not in html and "<script" not in html
    assert "<em>" not in html and "<strong>" not in html and "<code>" not in html


@pytest.mark.parametrize(
    ("value", "link"),
    [
        ("https://news.example/a?b=1&c=2#d", "https://news.example/a?b=1&c=2#d"),
        ("  HTTP://News.Example/Path  ", "http://news.example/Path"),
        ("https://ex.example/a(b)[c]'d'", "https://ex.example/a%28b%29%5Bc%5D%27d%27"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("javascript:alert(1)", None),
        (" JaVaScRiPt:alert(1)", None),
        ("data:text/html,<script>", None),
        ("vbscript:x", None),
        ("/relative/path", None),
        ("//proto-relative.example/x", None),
        ("http://user:pw@example.com/", None),
        ("http://example.com\\@evil.example/", None),
        ("http://exa mple.com/", None),
        ("http://example.com:99999/", None),
        ("", None),
        (None, None),
    ],
)
def test_safe_link(value: object, link: str | None) -> None:
    assert safe_link(value) == link


HOSTILE_MARKDOWN = [
    "<script>alert(1)</script>Hello",
    "&lt;script&gt;alert(1)&lt;/script&gt;Hello",
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;Hello",
    '<img src=x onerror="alert(1)"> <a href="javascript:alert(1)">a</a> <iframe src=//evil></iframe>',
    "[click](javascript:alert(1)) [c2](JavaScript:alert(1) 'title') [c3]( javascript:alert(1) )",
    "![x](data:image/svg+xml;base64,PHN2Zz4=) [v](vbscript:msgbox) [f](file:///etc/passwd)",
    "<javascript:alert(1)> <data:text/html,x> [ref][r]\n\n[r]: javascript:alert(1)",
    "[nested [brackets]](javascript:alert(1)) [paren](javascript:alert((1)))",
    "> [q]: javascript:alert(1)\n\n- [l]:\n  javascript:alert(1)\n\n[q] [l]",
    "<div onclick=alert(1)>x</div><svg><script>alert(1)</script></svg><!-- c --><?php x ?>",
]


@pytest.mark.parametrize("text", HOSTILE_MARKDOWN)
def test_safe_markdown_renders_without_html_or_unsafe_links(text: str) -> None:
    import re

    rendered = MarkdownIt("commonmark", {"html": True}).render(safe_markdown(text))
    tags = re.findall(r"<\s*([a-zA-Z0-9]+)", rendered)
    assert set(tags) <= {
        "p",
        "a",
        "img",
        "em",
        "strong",
        "h1",
        "h2",
        "h3",
        "ul",
        "ol",
        "li",
        "blockquote",
        "code",
        "pre",
        "br",
        "hr",
    }, rendered
    for url in re.findall(r'(?:href|src)="([^"]*)"', rendered):
        assert url.startswith(("http://", "https://")), rendered
    assert "<script" not in rendered.lower() and " on" not in re.sub(r">[^<]*<", "><", rendered), rendered


def test_safe_markdown_keeps_markdown_and_http_links() -> None:
    text = (
        "## Science\n\n> a quote & more\n\n- *one* a < b, AT&T\n- [Story](https://example.com/a?x=1&y=2)\n"
        "![chart](https://example.com/c.png) <https://example.com/auto>\n\n[ref]: https://example.org/r\n"
    )
    out = safe_markdown(text)
    assert out.startswith("## Science\n\n> a quote & more\n\n- *one* a < b, AT&T\n")
    assert "[Story](https://example.com/a?x=1&y=2)" in out
    assert "![chart](https://example.com/c.png)" in out and "(https://example.com/auto)" in out
    assert "[ref]: https://example.org/r" in out
    assert safe_markdown(out) == out  # stable: sanitising stored content again changes nothing
