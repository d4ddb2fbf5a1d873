"""The fetcher against real local servers: redirects, limits, slow-loris, stop, DNS rebinding, TLS.

Servers run on 127.0.0.1 (allowed by an explicit allow-list, as an operator
would) and 127.0.0.2 (not allowed: it stands for an internal host).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.net.errors import (
    ADDRESS_NOT_ALLOWED,
    UNREACHABLE,
    FetchError,
    FetchFailed,
    FetchRefused,
    FetchStopped,
    FetchTimedOut,
    FetchUnreachable,
)
from app.net.fetch import Fetcher
from app.net.policy import AddressPolicy
from tests.local_http import Drip, LocalServer, body, redirect

LOCAL = AddressPolicy.from_text("127.0.0.1/32")
FEED = b"<rss version='2.0'><channel><title>t</title></channel></rss>"


def fetcher(**kwargs: object) -> Fetcher:
    options: dict[str, object] = {"policy": LOCAL, "deadline_seconds": 10.0}
    options.update(kwargs)
    return Fetcher(**options)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


@pytest.fixture
def internal(server: LocalServer) -> Iterator[LocalServer]:
    """A server on 127.0.0.2 (an 'internal' host the allow-list does not cover), same port if free."""
    try:
        s = LocalServer("127.0.0.2", server.port)
    except OSError:
        s = LocalServer("127.0.0.2")
    with s:
        s.routes["/"] = body(b"SECRET internal data")
        s.routes["/feed.xml"] = body(b"SECRET internal data")
        yield s


def no_fetch_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name in ("fetch-watchdog", "fetch-dns")]


# ---- plain fetching -------------------------------------------------------------------------


def test_a_feed_is_fetched_with_its_headers_and_final_url(server: LocalServer) -> None:
    server.routes["/feed.xml"] = body(FEED, content_type="application/rss+xml; charset=utf-8")
    server.routes["/old"] = redirect("/feed.xml", 301)
    got = fetcher().fetch(server.url("/old"), headers={"User-Agent": "digest/1", "Host": "evil.example"})
    assert got.content == FEED
    assert got.status_code == 200
    assert got.url == server.url("/feed.xml")
    assert got.content_type == "application/rss+xml"
    assert got.text.startswith("<rss")
    assert server.paths() == ["/old", "/feed.xml"]
    headers = server.requests[0][1]
    assert headers["user-agent"] == "digest/1"
    assert headers["host"] == f"127.0.0.1:{server.port}"  # a plugin cannot override the Host
    assert no_fetch_threads()


def test_gzip_bodies_are_decoded(server: LocalServer) -> None:
    server.routes["/gz"] = body(gzip.compress(FEED), Content_Encoding="gzip")
    assert fetcher().fetch(server.url("/gz")).content == FEED


def test_an_error_status_is_reported_with_the_standard_phrase_never_the_servers(server: LocalServer) -> None:
    def teapot(h):  # type: ignore[no-untyped-def]
        h.send_response(503, "<script>alert(1)</script> internal detail")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/down"] = teapot
    with pytest.raises(FetchFailed) as caught:
        fetcher().fetch(server.url("/down"))
    assert caught.value.reason == "HTTP 503 Service Unavailable"
    assert caught.value.status_code == 503
    with pytest.raises(FetchFailed, match=r"^HTTP 404 Not Found$"):
        fetcher().fetch(server.url("/missing"))


# ---- redirects ------------------------------------------------------------------------------


def test_a_redirect_to_an_internal_address_is_refused_before_connecting(
    server: LocalServer, internal: LocalServer
) -> None:
    server.routes["/a"] = redirect(internal.url("/feed.xml"))
    server.routes["/b"] = redirect(f"http://2130706434:{internal.port}/feed.xml")  # 127.0.0.2
    server.routes["/c"] = redirect(f"http://[::ffff:127.0.0.2]:{internal.port}/feed.xml")
    for path in ("/a", "/b", "/c"):
        with pytest.raises(FetchRefused) as caught:
            fetcher().fetch(server.url(path))
        assert caught.value.reason == ADDRESS_NOT_ALLOWED
    assert internal.requests == []


def test_a_redirect_to_a_name_that_resolves_internally_is_refused(
    server: LocalServer, internal: LocalServer
) -> None:
    server.routes["/a"] = redirect(f"http://intranet.example:{internal.port}/feed.xml")
    resolve = {"intranet.example": ["127.0.0.2"]}
    with pytest.raises(FetchRefused, match=ADDRESS_NOT_ALLOWED):
        fetcher(resolve=lambda host, port: resolve[host]).fetch(server.url("/a"))
    assert internal.requests == []


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "ftp://example.com/feed", "javascript:alert(1)", "gopher://127.0.0.1:70/"],
)
def test_a_redirect_to_another_scheme_is_refused(server: LocalServer, location: str) -> None:
    server.routes["/a"] = redirect(location)
    with pytest.raises(FetchRefused) as caught:
        fetcher().fetch(server.url("/a"))
    assert caught.value.reason in (
        "redirect refused: only http and https URLs are fetched",
        "redirect refused: not a valid URL",  # how httpx reads "javascript:alert(1)"
    )


def test_redirects_are_followed_only_a_few_times(server: LocalServer) -> None:
    for hop in range(5):
        server.routes[f"/hop{hop}"] = redirect(f"/hop{hop + 1}")
    server.routes["/hop5"] = body(FEED)
    assert fetcher(max_redirects=5).fetch(server.url("/hop0")).content == FEED
    with pytest.raises(FetchFailed, match=r"^too many redirects$"):
        fetcher(max_redirects=4).fetch(server.url("/hop0"))
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(FetchFailed, match=r"^too many redirects$"):
        fetcher().fetch(server.url("/loop"))


def test_credentials_do_not_follow_a_redirect_to_another_origin(server: LocalServer) -> None:
    with LocalServer() as other:
        other.routes["/feed.xml"] = body(FEED)
        server.routes["/same"] = redirect("/feed.xml")
        server.routes["/feed.xml"] = body(FEED)
        server.routes["/away"] = redirect(other.url("/feed.xml"))
        secret = {"Authorization": "Bearer s3cret", "Cookie": "session=1", "X-Trace": "t"}
        fetcher().fetch(server.url("/same"), headers=secret)
        fetcher().fetch(server.url("/away"), headers=secret)
        assert server.requests[1][1]["authorization"] == "Bearer s3cret"  # same origin keeps them
        moved = other.requests[0][1]
        assert "authorization" not in moved and "cookie" not in moved
        assert moved["x-trace"] == "t"


# ---- limits ---------------------------------------------------------------------------------


def test_a_body_over_the_cap_is_refused(server: LocalServer) -> None:
    server.routes["/big"] = body(b"x" * 20_000)

    def liar(h):  # type: ignore[no-untyped-def]
        h.send_response(200)
        h.send_header("Content-Length", "10")
        h.end_headers()
        h.wfile.write(b"y" * 50_000)

    server.routes["/liar"] = liar
    f = fetcher(max_bytes=10_000)
    with pytest.raises(FetchFailed, match=r"^larger than 10000 bytes$"):
        f.fetch(server.url("/big"))
    assert f.fetch(server.url("/liar")).content == b"y" * 10  # the declared length is what is read
    with pytest.raises(FetchFailed, match=r"^larger than 10000 bytes$"):  # a caller cannot raise the cap
        f.fetch(server.url("/big"), max_bytes=50_000)
    assert len(fetcher(max_bytes=50_000).fetch(server.url("/big"), max_bytes=5_000_000).content) == 20_000


def test_a_compression_bomb_is_refused_with_bounded_memory(server: LocalServer) -> None:
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # ~200 KB that inflates to 200 MB
    server.routes["/bomb"] = body(bomb, Content_Encoding="gzip")
    tracemalloc.start()
    try:
        with pytest.raises(FetchFailed, match=r"^larger than 1000000 bytes$"):
            fetcher(max_bytes=1_000_000).fetch(server.url("/bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak  # the cap plus buffers, nowhere near the inflated 200 MB


def test_a_slow_loris_body_is_cut_at_the_total_deadline(server: LocalServer) -> None:
    drip = Drip(interval=1.0)
    server.routes["/drip"] = drip
    with pytest.raises(FetchTimedOut) as caught:
        fetcher(deadline_seconds=2.5).fetch(server.url("/drip"))
    returned = time.monotonic()
    assert caught.value.reason == "took longer than 2.5 s"
    assert no_fetch_threads()
    assert drip.hung_up.wait(30), "the server kept sending: the connection was not closed"
    assert drip.sent_after(returned) <= 2  # a write may land in the socket buffer before the reset
    sent = len(drip.sent_at)
    time.sleep(1.5)
    assert len(drip.sent_at) == sent  # nothing is downloading any more


def test_a_slow_loris_status_line_is_cut_at_the_total_deadline(server: LocalServer) -> None:
    drip = Drip(interval=0.5, status_line_too=True)
    server.routes["/drip"] = drip
    with pytest.raises(FetchUnreachable, match=UNREACHABLE):  # never answered: reads like a closed port
        fetcher(deadline_seconds=2.0).fetch(server.url("/drip"))
    assert drip.hung_up.wait(30)
    assert no_fetch_threads()


def test_a_fetch_ends_when_the_run_is_given_up(server: LocalServer) -> None:
    # Headers, one byte, then silence: only the watchdog can end a read that is simply waiting.
    server.routes["/stall"] = Drip(interval=3600)
    stopped = threading.Event()
    threading.Timer(1.0, stopped.set).start()
    with pytest.raises(FetchStopped) as caught:  # not FetchTimedOut: the stop ended it, not the deadline
        fetcher(deadline_seconds=120).fetch(server.url("/stall"), stopped=stopped)
    assert caught.value.reason == "stopped: the run was given up"
    assert no_fetch_threads()
    with pytest.raises(FetchStopped):  # a run already given up fetches nothing
        fetcher().fetch(server.url("/feed.xml"), stopped=stopped)
    assert server.paths() == ["/stall"]


# ---- what a failure says --------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new connection attempts (they time out)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    yield int(listener.getsockname()[1])
    for filler in fillers:
        filler.close()
    listener.close()


def test_a_connection_that_times_out_reads_like_one_refused(silent_port: int) -> None:
    with pytest.raises(FetchUnreachable) as timed_out:
        fetcher(deadline_seconds=1.5).fetch(f"http://127.0.0.1:{silent_port}/feed.xml")
    with pytest.raises(FetchUnreachable) as refused:
        fetcher(deadline_seconds=1.5).fetch(f"http://127.0.0.1:{_closed_port()}/feed.xml")
    assert timed_out.value.reason == refused.value.reason == UNREACHABLE
    with pytest.raises(TimeoutError):  # the silent port really makes connections time out
        socket.create_connection(("127.0.0.1", silent_port), timeout=0.5).close()


def test_failures_to_connect_all_read_the_same(server: LocalServer) -> None:
    def reset(h):  # type: ignore[no-untyped-def]
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        h.connection.close()

    server.routes["/reset"] = reset
    resolve_fails = fetcher(resolve=lambda host, port: (_ for _ in ()).throw(socket.gaierror("nope")))
    reasons = set()
    for f, url in [
        (fetcher(), f"http://127.0.0.1:{_closed_port()}/feed.xml"),
        (resolve_fails, "http://no-such-host.example/feed.xml"),
    ]:
        with pytest.raises(FetchUnreachable) as caught:
            f.fetch(url)
        reasons.add(caught.value.reason)
    assert reasons == {UNREACHABLE}
    with pytest.raises(FetchError):
        fetcher().fetch(server.url("/reset"))


def test_a_refusal_reads_the_same_whether_or_not_something_listens(internal: LocalServer) -> None:
    reasons = set()
    for url in (internal.url("/"), f"http://127.0.0.2:{_closed_port()}/", "http://10.255.255.1:81/"):
        with pytest.raises(FetchRefused) as caught:
            fetcher(deadline_seconds=30).fetch(url)
        reasons.add(str(caught.value))
    assert reasons == {ADDRESS_NOT_ALLOWED}
    assert internal.requests == []


def test_no_failure_before_an_answer_tells_whether_a_port_is_open(
    server: LocalServer, internal: LocalServer, silent_port: int
) -> None:
    """A port scan through feed problems learns nothing: a closed port, a refused address (with or
    without a listener), a reset connection, a listener that never answers and a connection that
    times out all give the same reason."""

    def reset(h):  # type: ignore[no-untyped-def]
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        h.connection.close()

    server.routes["/reset"] = reset
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    try:
        urls = [
            f"http://127.0.0.1:{_closed_port()}/",
            internal.url("/feed.xml"),
            f"http://127.0.0.2:{_closed_port()}/",
            "http://10.255.255.1:81/",
            server.url("/reset"),
            f"http://127.0.0.1:{silent.getsockname()[1]}/",
            f"http://127.0.0.1:{silent_port}/",
        ]
        reasons = {}
        for url in urls:
            with pytest.raises(FetchError) as caught:
                fetcher(deadline_seconds=1.5).fetch(url)
            reasons[url] = caught.value.reason
    finally:
        silent.close()
    assert set(reasons.values()) == {UNREACHABLE}, reasons
    assert internal.requests == []


# ---- DNS rebinding --------------------------------------------------------------------------


def test_the_connection_goes_to_the_address_that_was_checked(
    server: LocalServer, internal: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that answers 127.0.0.1 (allowed) first and 127.0.0.2 (internal) afterwards."""
    if internal.port != server.port:
        pytest.fail("could not bind 127.0.0.2 on the same port as the public server")
    server.routes["/"] = body(b"public content")
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "rebind.example":
            lookups.append(host)
            host = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetcher().fetch(f"http://rebind.example:{server.port}/")
    assert got.content == b"public content"
    assert lookups == ["rebind.example"]  # resolved once; nothing looked the name up again to connect
    assert server.requests[0][1]["host"] == f"rebind.example:{server.port}"
    with pytest.raises(FetchRefused, match=ADDRESS_NOT_ALLOWED):  # the next lookup says internal
        fetcher().fetch(f"http://rebind.example:{server.port}/")
    assert internal.requests == []


def test_a_name_with_any_internal_address_is_refused(server: LocalServer) -> None:
    server.routes["/"] = body(b"public content")
    both = fetcher(resolve=lambda host, port: ["127.0.0.1", "10.0.0.7"])
    with pytest.raises(FetchRefused, match=ADDRESS_NOT_ALLOWED):
        both.fetch(f"http://mixed.example:{server.port}/")
    assert server.requests == []


# ---- TLS ------------------------------------------------------------------------------------


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_verifies_the_name_while_connecting_to_the_checked_address(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "feeds.example")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment,misc,return-value]
    client_tls = ssl.create_default_context(cafile=str(cert))
    with LocalServer(tls=server_tls) as tls_server:
        tls_server.routes["/feed.xml"] = body(FEED)
        f = fetcher(resolve=lambda host, port: ["127.0.0.1"], ssl_context=client_tls)
        got = f.fetch(tls_server.url("/feed.xml", host="feeds.example"))
        assert got.content == FEED
        assert seen_sni == ["feeds.example"]
        assert tls_server.requests[0][1]["host"] == f"feeds.example:{tls_server.port}"
        with pytest.raises(FetchError):  # the certificate names feeds.example, not 127.0.0.1
            fetcher(ssl_context=client_tls).fetch(tls_server.url("/feed.xml"))


def test_a_tls_handshake_dribbled_out_is_cut_at_the_deadline() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    hung_up = threading.Event()

    def dribble() -> None:
        conn, _ = listener.accept()
        try:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a TLS record header announcing 16 KB...
            for _ in range(600):
                time.sleep(0.2)
                conn.sendall(b"\x02")  # ...delivered one byte at a time
        except OSError:
            hung_up.set()
        finally:
            conn.close()

    threading.Thread(target=dribble, daemon=True).start()
    try:
        with pytest.raises(FetchUnreachable, match=UNREACHABLE):  # never answered
            fetcher(deadline_seconds=2.0).fetch(f"https://127.0.0.1:{listener.getsockname()[1]}/")
        assert hung_up.wait(30)
        assert no_fetch_threads()
    finally:
        listener.close()
