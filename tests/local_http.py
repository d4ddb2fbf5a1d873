"""Real HTTP servers for the fetch tests: routes, redirects, a slow-loris drip, TLS.

:class:`LocalServer` is a ThreadingHTTPServer on a loopback address whose
routes are plain functions of the request handler; it records every request
(path and headers). :class:`Drip` answers with one byte per interval forever
and records when each byte was written and when the client hung up.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[BaseHTTPRequestHandler], None]


def body(
    content: bytes, *, status: int = 200, content_type: str = "application/xml", **headers: str
) -> Route:
    """A route answering ``content`` with a Content-Length."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(content)

    return route


def redirect(location: str, status: int = 302) -> Route:
    """A route redirecting to ``location``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


@dataclass
class Drip:
    """Headers (unless ``status_line_too``), then one byte every ``interval`` seconds, forever."""

    interval: float = 1.0
    status_line_too: bool = False
    sent_at: list[float] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        try:
            if not self.status_line_too:
                h.send_response(200)
                h.send_header("Content-Type", "application/xml")
                h.end_headers()
            payload = b"HTTP/1.1 200 OK\r\n" if self.status_line_too else b"<" * 1_000_000
            for i in range(len(payload)):
                h.wfile.write(payload[i : i + 1])
                self.sent_at.append(time.monotonic())
                time.sleep(self.interval)
        except OSError:
            self.hung_up.set()  # the client closed the connection: writing failed

    def sent_after(self, moment: float) -> int:
        """Bytes written after ``moment`` (time.monotonic)."""
        return sum(1 for t in self.sent_at if t > moment)


class LocalServer:
    """An HTTP(S) server in a thread; ``routes[path]`` answers, 404 otherwise."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = server.routes.get(self.path)
                if route is None:
                    body(b"not here", status=404)(self)
                else:
                    route(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        # The fetcher hangs up on errors and limits on purpose: no tracebacks for broken pipes.
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        """This server's URL for ``path`` (optionally spelled with another host name)."""
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        """Paths requested so far, in order."""
        return [path for path, _ in self.requests]
