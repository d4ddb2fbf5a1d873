"""The daily-news-digest feeds against a local HTTP server: RSS, Atom, malformed, failing, unreachable.

The server runs in a thread on 127.0.0.1, which the fetcher refuses unless the
operator allows it: these tests allow exactly 127.0.0.1/32 (``FETCH_ALLOW_NETWORKS``
for the whole plugin, an explicit policy for :func:`collect`). The last tests run the whole plugin
(feeds, topic filter, both agents on the offline model) in-process through the
framework's loader and crew job, so the digest is checked end to end.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from app.net.fetch import Fetcher
from app.net.policy import AddressPolicy

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "daily-news-digest"

RSS = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>Local RSS</title><link>http://local/</link><description>d</description>
<item><title>Quantum chip breaks a record</title><link>http://local/rss/quantum</link>
  <category>Technology</category><description>&lt;p&gt;A new chip held qubits for a full second.
  Engineers call it a milestone.&lt;/p&gt;</description></item>
<item><title>Local team wins the league</title><link>http://local/rss/league</link>
  <category>Sports</category><description>The club won its first title.</description></item>
<item><title>Quantum chip breaks a record</title><link>http://local/rss/quantum</link>
  <category>Technology</category><description>Duplicate entry.</description></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Local Atom</title><id>urn:local</id>
<updated>2025-11-24T06:00:00Z</updated>
<entry><title>Comet seen from the city</title><id>urn:1</id><link href="http://local/atom/comet"/>
  <updated>2025-11-24T06:00:00Z</updated><category term="science"/>
  <summary>Astronomers say the comet will stay visible for a week.</summary></entry>
<entry><title>Researchers map a deep ocean trench</title><id>urn:2</id><link href="http://local/atom/trench"/>
  <updated>2025-11-24T05:00:00Z</updated>
  <summary>Scientists used robots to survey the trench floor.</summary></entry>
</feed>"""

MALFORMED = b"this is <not> a feed at all <<<"


class _Handler(BaseHTTPRequestHandler):
    routes = {"/rss.xml": RSS, "/atom.xml": ATOM, "/broken.xml": MALFORMED}

    def do_GET(self) -> None:
        if self.path == "/slow.xml":
            time.sleep(2)
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients hang up
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def unreachable() -> str:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/feed.xml"


@pytest.fixture(scope="module")
def feeds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digest_feeds_under_test", PLUGIN / "crew" / "feeds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def bundled(name: str) -> Path:
    return PLUGIN / "feeds" / name


LOCAL = AddressPolicy.from_text("127.0.0.1/32")


def local_fetch(deadline: float = 5.0) -> Callable[[str], object]:
    """What ``ctx.fetch`` does for the digest, with 127.0.0.1 allowed."""
    fetcher = Fetcher(policy=LOCAL, deadline_seconds=deadline)
    return lambda url: fetcher.fetch(url)


@pytest.fixture(autouse=True)
def allow_local_server(setenv) -> None:  # type: ignore[no-untyped-def]
    setenv(FETCH_ALLOW_NETWORKS="127.0.0.1/32")


def test_rss_and_atom_articles_are_kept_by_topic(feeds: ModuleType, server: str) -> None:
    found = feeds.collect(
        [f"{server}/rss.xml", f"{server}/atom.xml"],
        topics=["science", "technology"],
        limit=10,
        fetch=local_fetch(),
        resolve_bundled=bundled,
    )
    assert [(a.title, a.topic, a.link) for a in found.articles] == [
        ("Quantum chip breaks a record", "technology", "http://local/rss/quantum"),
        ("Comet seen from the city", "science", "http://local/atom/comet"),
        ("Researchers map a deep ocean trench", "science", "http://local/atom/trench"),  # by keyword
    ]
    assert (
        found.articles[0].summary
        == "A new chip held qubits for a full second. Engineers call it a milestone."
    )
    assert found.articles[0].source == "Local RSS"
    assert [(f.ok, f.entries) for f in found.feeds] == [(True, 3), (True, 2)]
    assert found.problems == []


def test_bad_feeds_are_reported_and_the_others_still_read(
    feeds: ModuleType, server: str, unreachable: str
) -> None:
    sources = [
        f"{server}/broken.xml",
        unreachable,
        f"{server}/gone.xml",
        "bundled:no-such-feed.xml",
        f"{server}/atom.xml",
    ]
    found = feeds.collect(sources, topics=["science"], limit=10, fetch=local_fetch(), resolve_bundled=bundled)
    assert [a.link for a in found.articles] == ["http://local/atom/comet", "http://local/atom/trench"]
    problems = found.problems
    assert len(problems) == 4
    assert problems[0].startswith(f"{server}/broken.xml: malformed feed (not RSS or Atom)")
    assert problems[1] == f"{unreachable}: unreachable"
    assert problems[2] == f"{server}/gone.xml: HTTP 404 Not Found"
    assert problems[3] == "bundled:no-such-feed.xml: no such bundled feed"


def test_a_slow_feed_times_out_instead_of_hanging(feeds: ModuleType, server: str) -> None:
    found = feeds.collect(
        [f"{server}/slow.xml"], topics=["science"], limit=5, fetch=local_fetch(0.3), resolve_bundled=bundled
    )
    assert found.articles == []
    # No answer within the deadline reads like a closed port (a slow body: "took longer than").
    assert found.problems == [f"{server}/slow.xml: unreachable"]


def test_bundled_sample_feed_and_limit(feeds: ModuleType) -> None:
    found = feeds.collect(
        ["bundled:sample-feed.xml"], topics=["sports"], limit=1, fetch=local_fetch(), resolve_bundled=bundled
    )
    assert [a.title for a in found.articles] == ["Underdogs win the cup in a penalty shoot-out"]


def test_only_http_and_bundled_sources_are_read(feeds: ModuleType) -> None:
    found = feeds.collect(
        ["file:///etc/passwd"], topics=["science"], limit=5, fetch=local_fetch(), resolve_bundled=bundled
    )
    assert found.articles == []
    assert found.problems == ["file:///etc/passwd: only http and https URLs are fetched"]


def run_digest(settings: dict[str, object]) -> dict[str, object]:
    """The whole plugin, in-process: the framework's loader, context and crew job on the offline model."""
    from app.execution import runtime
    from app.execution.contract import CrewContext
    from app.execution.crew_loader import entry_point_file, load_entry_point
    from app.execution.crew_thread import CrewJob
    from app.execution.llm import make_llm
    from app.plugins.registry import load_plugin
    from app.plugins.settings import validate_settings

    runtime.prepare()
    plugin = load_plugin(PLUGIN)
    load_entry_point(plugin)
    ctx = CrewContext.create(
        run_id="feeds-test",
        plugin=plugin.name,
        settings=validate_settings(plugin.spec, settings),
        llm=make_llm(),
        folder=plugin.folder,
        crew_folder=entry_point_file(plugin)[0].parent,
    )
    job = CrewJob(plugin, ctx, "offline/extractive")
    job.run()
    assert job.error is None, job.error
    assert job.output is not None
    return job.output


def test_digest_is_built_from_the_readable_feeds(server: str, unreachable: str) -> None:
    out = run_digest(
        {
            "topics": ["technology", "science"],
            "feeds": [f"{server}/rss.xml", f"{server}/broken.xml", unreachable, f"{server}/atom.xml"],
        }
    )
    content = str(out["content"])
    assert (
        "- **[Quantum chip breaks a record](http://local/rss/quantum)** — A new chip held qubits" in content
    )
    assert "[Comet seen from the city](http://local/atom/comet)" in content
    assert content.index("## Technology") < content.index("## Science")
    assert "Local team wins the league" not in content
    assert f"_Some feeds could not be read: {server}/broken.xml, {unreachable}._" in content
    report = out["report"]
    assert isinstance(report, dict)
    assert len(report["feed_problems"]) == 2


def test_no_matching_articles_still_makes_a_digest(server: str) -> None:
    out = run_digest({"topics": ["politics"], "feeds": [f"{server}/rss.xml"]})
    assert "No stories matched your topics today." in str(out["content"])
    report = out["report"]
    assert isinstance(report, dict) and report["articles_considered"] == 0


# ---- hostile feed bodies ----------------------------------------------------------------------

MARKER = "MARKER-7f3a91"
MARKER_FEED = f"""<?xml version="1.0"?><rss version="2.0"><channel><title>{MARKER} feed</title>
<item><title>{MARKER} technology story</title><link>http://local/{MARKER}</link>
<category>technology</category><description>{MARKER} software chip</description></item>
</channel></rss>""".encode()


class _BodyServer:
    """A local server answering each path with a body set by the test."""

    def __init__(self) -> None:
        from tests.local_http import LocalServer

        self.server = LocalServer()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.server.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def test_a_body_naming_a_local_file_or_url_is_parsed_as_text_never_opened(
    feeds: ModuleType, tmp_path: Path
) -> None:
    from tests.local_http import body

    secret = tmp_path / "secret-feed.xml"
    secret.write_bytes(MARKER_FEED)  # a real feed: opened as a path, its story would be kept
    with _BodyServer() as server:
        server.routes["/marker.xml"] = body(MARKER_FEED)
        server.routes["/path.xml"] = body(str(secret).encode())
        server.routes["/passwd.xml"] = body(b"/etc/passwd")
        server.routes["/url.xml"] = body(server.url("/marker.xml").encode())
        server.routes["/fileurl.xml"] = body(f"file://{secret}".encode())
        sources = [server.url(p) for p in ("/path.xml", "/passwd.xml", "/url.xml", "/fileurl.xml")]
        found = feeds.collect(
            sources, topics=["technology"], limit=10, fetch=local_fetch(), resolve_bundled=bundled
        )
        assert "/marker.xml" not in server.paths()  # feedparser did not follow the URL body
    assert found.articles == []
    assert [f.ok for f in found.feeds] == [False] * 4
    assert all("malformed feed (not RSS or Atom)" in p for p in found.problems)
    assert MARKER not in repr(found) and "root:" not in repr(found)


def test_a_body_naming_dev_zero_ends_at_once_with_bounded_memory(feeds: ModuleType) -> None:
    import tracemalloc

    from tests.local_http import body

    with _BodyServer() as server:
        server.routes["/zero.xml"] = body(b"/dev/zero")
        tracemalloc.start()
        try:
            found = feeds.collect(
                [server.url("/zero.xml")],
                topics=["technology"],
                limit=10,
                fetch=local_fetch(),
                resolve_bundled=bundled,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (
        found.problems[0].endswith("malformed feed (not RSS or Atom)")
        or "malformed feed" in found.problems[0]
    )
    assert peak < 50_000_000, peak  # reading /dev/zero would grow without end


def test_bundled_feeds_stay_inside_the_plugin_folder(feeds: ModuleType, tmp_path: Path) -> None:
    from app.execution.contract import CrewContext

    folder = tmp_path / "plugin"
    (folder / "feeds").mkdir(parents=True)
    (folder / "feeds" / "zero.xml").symlink_to("/dev/zero")
    (folder / "feeds" / "passwd.xml").symlink_to("/etc/passwd")
    ctx = CrewContext.create(run_id="r", plugin="p", settings={}, llm=None, folder=folder, crew_folder=folder)
    found = feeds.collect(
        ["bundled:zero.xml", "bundled:passwd.xml", "bundled:../../../etc/passwd"],
        topics=["technology"],
        limit=5,
        fetch=local_fetch(),
        resolve_bundled=lambda name: ctx.resolve(f"feeds/{name}"),
    )
    assert found.problems == [
        "bundled:zero.xml: not a bundled feed name",
        "bundled:passwd.xml: not a bundled feed name",
        "bundled:../../../etc/passwd: not a bundled feed name",
    ]


HOSTILE_FEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>Hostile &lt;script&gt;alert('t')&lt;/script&gt; wire</title>
<item><title>Chip &lt;script&gt;alert(1)&lt;/script&gt; breakthrough</title>
  <link>javascript:alert(document.cookie)</link><category>technology</category>
  <description>&lt;p&gt;A new chip.&lt;/p&gt;&lt;script&gt;steal()&lt;/script&gt;
  &amp;lt;img src=x onerror=alert(2)&amp;gt;
  &lt;a href="javascript:alert(3)"&gt;read&lt;/a&gt;</description></item>
<item><title>Robots **win** [prize](javascript:alert(4)) ![x](http://evil.example/pixel.png)</title>
  <link>data:text/html;base64,PHNjcmlwdD5hbGVydCg1KTwvc2NyaXB0Pg==</link><category>technology</category>
  <description>See &lt;https://evil.example/phish&gt; and [this](http://evil.example/phish)
  &lt;b onclick=x&gt;now&lt;/b&gt;.</description></item>
<item><title>Software update ships</title><link>https://news.example/ok?a=1&amp;b=(2)</link>
  <category>technology</category><description>A plain &amp; honest summary.</description></item>
</channel></rss>"""


def _rendered(markdown: str) -> tuple[list[str], list[str]]:
    """(every tag, every href) of ``markdown`` rendered by a CommonMark renderer that passes raw HTML."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    tags: list[str] = []
    hrefs: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append(tag)
            hrefs.extend(v or "" for k, v in attrs if k in ("href", "src"))

    Collect().feed(MarkdownIt("commonmark").render(markdown))
    return tags, hrefs


def test_hostile_feed_text_never_becomes_html_or_links_in_the_digest() -> None:
    import json

    from tests.local_http import body

    with _BodyServer() as server:
        server.routes["/hostile.xml"] = body(HOSTILE_FEED)
        out = run_digest({"topics": ["technology"], "feeds": [server.url("/hostile.xml")]})
    content = str(out["content"])
    everything = json.dumps(out)
    for bad in ("<script", "javascript:alert(document", "data:text/html", "onerror", "steal()"):
        assert bad not in everything, bad
    tags, hrefs = _rendered(content)
    assert set(tags) <= {"h1", "h2", "p", "ul", "li", "strong", "a", "em"}, tags
    assert hrefs == ["https://news.example/ok?a=1&b=%282%29"]  # the one article with a safe link
    # The articles with unsafe links keep their titles, as text.
    assert "Chip breakthrough" in content
    assert "Robots \\*\\*win\\*\\* \\[prize\\]" in content
    report = out["report"]
    assert isinstance(report, dict) and report["articles_considered"] == 3
