"""The framework's one HTTP fetcher for URLs that come from users' settings (``ctx.fetch``).

Guarantees of :meth:`Fetcher.fetch`:

* only ``http``/``https``; no credentials in URLs; every address a host
  resolves to is checked by the :class:`~app.net.policy.AddressPolicy` and the
  connection goes to a checked address (see :mod:`app.net.transport`);
* redirects are followed at most ``max_redirects`` times, every hop checked
  the same way (scheme, credentials, addresses); ``Authorization`` and
  ``Cookie`` headers are dropped when a redirect changes origin;
* one **total** deadline for the whole fetch (lookups, connects, TLS,
  redirects, the body), and the fetch ends when ``stopped`` is set; either
  way its sockets are shut down, so no thread keeps downloading;
* the body is capped at ``max_bytes`` decoded bytes, with bounded memory;
* no proxies, ``.netrc`` or certificate variables from the environment
  (``trust_env`` off): the checked address is the one connected to;
* failures raise a :class:`~app.net.errors.FetchError` whose ``reason`` is
  safe to show a user; a non-2xx answer is ``"HTTP <code> <standard phrase>"``.
  Before a server answers (status line and headers), every failure reads
  ``"unreachable"``: a refused address, a closed port, a reset or lost
  connection and a deadline passed while connecting or waiting are one answer,
  so reports cannot be used to scan ports. Only a server that answered can
  make a fetch "take longer than" its deadline.

httpx does the HTTP; this module supplies its network backend and the policy.
"""

from __future__ import annotations

import http
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING

import httpcore
import httpx

from app.net.body import BoundedBody
from app.net.errors import (
    ADDRESS_NOT_ALLOWED,
    UNREACHABLE,
    FetchError,
    FetchFailed,
    FetchRefused,
    FetchTimedOut,
    FetchUnreachable,
)
from app.net.guard import FetchGuard
from app.net.policy import AddressPolicy
from app.net.transport import CheckedBackend, Resolver, system_resolve

if TYPE_CHECKING:
    from app.config import Settings

USER_AGENT = "first-sip-fetch/1.0"
#: Request headers a plugin cannot set: the fetcher owns framing, decoding and the target host.
RESERVED_HEADERS = frozenset(
    {"host", "accept-encoding", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)
#: Dropped when a redirect leaves the origin they were meant for.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context (certifi's CAs) per process; building one costs milliseconds."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context(trust_env=False)
        return _ssl_context


@dataclass(frozen=True)
class FetchResponse:
    """A successful (2xx) answer: the final URL after redirects, status, headers, decoded body."""

    url: str
    status_code: int
    #: Response headers, names lower-cased (repeated headers joined with ", ").
    headers: Mapping[str, str] = field(repr=False)
    content: bytes = field(repr=False)

    @property
    def content_type(self) -> str:
        """The media type without parameters (``"application/rss+xml"``), or ``""``."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def text(self) -> str:
        """The body decoded with the charset the server named (UTF-8 if none), bad bytes replaced."""
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's own transport, with an httpcore pool whose network backend checks addresses."""

    def __init__(self, *, backend: CheckedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("httpx changed: HTTPTransport._pool is gone; review app/net/fetch.py")
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=4, retries=0, network_backend=backend
        )


class Fetcher:
    """Fetches URLs under one address policy and one set of limits; safe to share between threads."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        deadline_seconds: float = 30.0,
        max_bytes: int = 5_000_000,
        max_redirects: int = 5,
        resolve: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.deadline_seconds = deadline_seconds
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._resolve = resolve
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(cls, settings: Settings) -> Fetcher:
        """The fetcher the settings describe (``FETCH_*``)."""
        return cls(
            policy=AddressPolicy.from_text(settings.fetch_allow_networks),
            deadline_seconds=settings.fetch_deadline_seconds,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
        )

    def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        stopped: threading.Event | None = None,
        deadline_seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> FetchResponse:
        """GET ``url`` (see the module docstring); a caller may only tighten the limits."""
        deadline = min(deadline_seconds or self.deadline_seconds, self.deadline_seconds)
        cap = min(max_bytes or self.max_bytes, self.max_bytes)
        target = self.policy.check_url(url)
        guard = FetchGuard(deadline_seconds=deadline, stopped=stopped)
        backend = CheckedBackend(policy=self.policy, guard=guard, resolve=self._resolve)
        transport = _CheckedTransport(backend=backend, ssl_context=self._ssl_context or default_ssl_context())
        client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(deadline),
            headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"},
        )
        error: FetchError
        try:
            return self._follow(client, target, _request_headers(headers), cap=cap, guard=guard)
        except FetchError as exc:
            error = exc
        except httpx.InvalidURL:  # httpx builds the next request of a redirect even when not following
            error = FetchRefused("redirect refused: not a valid URL")
        except httpx.TimeoutException:
            error = guard.tripped or guard.timed_out()
        except (httpx.HTTPError, httpcore.ProtocolError, OSError):  # TLS set-up, reset, connection lost
            error = guard.tripped or FetchUnreachable(UNREACHABLE)
        finally:
            client.close()
            guard.close()
        if isinstance(error, FetchTimedOut) and not guard.answered:
            # Nothing answered in time: a silent listener must read like a closed port.
            error = FetchUnreachable(UNREACHABLE)
        raise error from None

    def _follow(
        self, client: httpx.Client, url: httpx.URL, headers: dict[str, str], *, cap: int, guard: FetchGuard
    ) -> FetchResponse:
        for hop in range(self.max_redirects + 1):
            guard.check()
            guard.answered = False
            with client.stream("GET", url, headers=headers) as response:
                guard.answered = True
                if response.has_redirect_location:
                    if hop == self.max_redirects:
                        raise FetchFailed("too many redirects")
                    target = self._redirect_target(response)
                    if _origin(target) != _origin(url):
                        headers = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
                    url = target
                    continue
                if not response.is_success:
                    raise FetchFailed(_status_reason(response.status_code), status_code=response.status_code)
                return self._read(response, cap=cap)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _redirect_target(self, response: httpx.Response) -> httpx.URL:
        try:
            target = response.url.join(response.headers["location"])
        except (httpx.InvalidURL, ValueError):
            raise FetchRefused("redirect to an invalid URL") from None
        try:
            return self.policy.check_url(target)
        except FetchRefused as exc:
            if exc.reason == ADDRESS_NOT_ALLOWED:
                raise  # the same words for every refused address, wherever it came from
            raise FetchRefused(f"redirect refused: {exc.reason}") from None

    @staticmethod
    def _read(response: httpx.Response, *, cap: int) -> FetchResponse:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > 2 * cap:
            raise FetchFailed(f"larger than {cap} bytes")
        body = BoundedBody(content_encoding=response.headers.get("content-encoding", ""), max_bytes=cap)
        for chunk in response.iter_raw():
            body.feed(chunk)
        return FetchResponse(
            url=str(response.url),
            status_code=response.status_code,
            headers=MappingProxyType({k.lower(): v for k, v in response.headers.items()}),
            content=body.finish(),
        )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _request_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items() if k.lower() not in RESERVED_HEADERS}


def _status_reason(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""  # never the server's own text: it would end up in a user's report
    return f"HTTP {status} {phrase}".rstrip()


@lru_cache(maxsize=4)
def _fetcher_for(allow: str, deadline: float, max_bytes: int, max_redirects: int) -> Fetcher:
    return Fetcher(
        policy=AddressPolicy.from_text(allow),
        deadline_seconds=deadline,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
    )


def default_fetcher() -> Fetcher:
    """The fetcher this process's settings describe (what ``ctx.fetch`` uses)."""
    from app.config import get_settings

    s = get_settings()
    return _fetcher_for(
        s.fetch_allow_networks, s.fetch_deadline_seconds, s.fetch_max_bytes, s.fetch_max_redirects
    )


__all__ = ["UNREACHABLE", "FetchResponse", "Fetcher", "default_fetcher"]
