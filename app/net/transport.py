"""The network layer under httpx: resolve once, check every address, connect to a checked one.

httpx hands httpcore the URL; httpcore asks its *network backend* for a TCP
stream to ``(host, port)``, then runs TLS on that stream with the URL's host
name for SNI and certificate verification, and httpx sends the URL's host in
the ``Host`` header. :class:`CheckedBackend` is that backend. For each
connection it:

1. takes the address a literal host spells (any spelling the C resolver
   accepts), or resolves a name once, in a helper thread bounded by the
   fetch's deadline;
2. checks every address with the :class:`~app.net.policy.AddressPolicy`: one
   refused address refuses the fetch, before any connection is made;
3. connects (httpcore's own ``SyncBackend``) to the checked addresses, in
   order, never to the name: nothing resolves the name a second time, so
   there is no DNS-rebinding window;
4. returns a :class:`GuardedStream` whose reads, writes and TLS handshake are
   bounded by the fetch's :class:`~app.net.guard.FetchGuard`.

Every failure to connect to an allowed address (refused, timed out, reset,
name not found) is the same :class:`FetchUnreachable`, so a report cannot be
used to map which ports are open.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpcore

# httpcore's socket stream; its public SyncBackend returns it, but the class is not exported.
from httpcore._backends.sync import SyncStream

from app.net.errors import UNREACHABLE, FetchUnreachable
from app.net.guard import STOP_POLL_SECONDS, FetchGuard
from app.net.policy import AddressPolicy, ip_literal

#: ``resolve(host, port)`` -> the addresses ``host`` resolves to, in preference order.
Resolver = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for ``host``, de-duplicated, in its order."""
    found: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def resolve_within(resolve: Resolver, host: str, port: int, guard: FetchGuard) -> list[str]:
    """``resolve(host, port)``, given up on when the fetch's deadline passes or the run stops.

    The lookup runs in a daemon thread (the C resolver cannot be interrupted);
    one that outlives its fetch only finishes a DNS query, it downloads nothing.
    """
    result: list[str] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            result.extend(resolve(host, port))
        except BaseException as exc:  # reported below, in the fetching thread
            failure.append(exc)

    thread = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(min(guard.clamp(None), STOP_POLL_SECONDS))
    guard.check()
    if failure or not result:
        raise FetchUnreachable(UNREACHABLE) from (failure[0] if failure else None)
    return result


class GuardedStream(httpcore.NetworkStream):
    """A socket stream whose every blocking step ends by the fetch's deadline or stop signal."""

    def __init__(self, inner: httpcore.NetworkStream, guard: FetchGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._sock: socket.socket = inner.get_extra_info("socket")
        guard.register(self._sock)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, bounded by the deadline; a read the watchdog cut off raises the guard's reason."""
        try:
            data = self._inner.read(max_bytes, self._guard.clamp(timeout))
        except (httpcore.ReadError, httpcore.ReadTimeout):
            self._guard.check()
            raise
        if not data and self._guard.tripped is not None:
            raise self._guard.tripped  # the watchdog shut the socket down: not a real EOF
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, bounded by the deadline."""
        try:
            self._inner.write(buffer, self._guard.clamp(timeout))
        except (httpcore.WriteError, httpcore.WriteTimeout):
            self._guard.check()
            raise

    def close(self) -> None:
        """Close the socket (and stop watching it, atomically)."""
        self._guard.close_socket(self._sock, self._inner.close)

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        """TLS for ``server_hostname`` (the URL's host: SNI and certificate checks use the name)."""
        plain = self._sock
        try:
            plain.settimeout(self._guard.clamp(timeout))
            # Handshake after wrapping, so the watchdog can cut a handshake a server dribbles out.
            tls = ssl_context.wrap_socket(
                plain, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except OSError as exc:
            self.close()
            raise httpcore.ConnectError(str(exc)) from exc
        # wrap_socket moved the descriptor from `plain` to `tls`: watch that object instead.
        self._guard.close_socket(plain, lambda: None)
        stream = GuardedStream(SyncStream(tls), self._guard)
        try:
            self._guard.check()
            tls.do_handshake()
        except BaseException as exc:
            stream.close()
            self._guard.check()
            if isinstance(exc, socket.timeout):
                raise httpcore.ConnectTimeout(str(exc)) from exc
            if isinstance(exc, OSError):  # ssl.SSLError (certificate, protocol) included
                raise httpcore.ConnectError(str(exc)) from exc
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        """What httpcore asks of a stream (``ssl_object``, ``is_readable``, addresses)."""
        return self._inner.get_extra_info(info)


class CheckedBackend(httpcore.NetworkBackend):
    """httpcore's network backend for one fetch: checked addresses only, within the guard's bounds."""

    def __init__(
        self, *, policy: AddressPolicy, guard: FetchGuard, resolve: Resolver = system_resolve
    ) -> None:
        self._policy = policy
        self._guard = guard
        self._resolve = resolve
        self._sockets = httpcore.SyncBackend()

    def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses for ``host``; :class:`FetchRefused` if any is not allowed."""
        self._policy.check_host(host)
        literal = ip_literal(host)
        found = (
            [str(literal)] if literal is not None else resolve_within(self._resolve, host, port, self._guard)
        )
        self._policy.check_addresses(found)
        return found

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """A guarded stream to the first checked address of ``host`` that answers."""
        self._guard.check()
        last: Exception | None = None
        for address in self.addresses(host, port):
            if self._guard.remaining() <= 0:
                break
            try:
                stream = self._sockets.connect_tcp(
                    address,
                    port,
                    timeout=self._guard.clamp(timeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                self._guard.check_stopped()
                last = exc
                continue
            return GuardedStream(stream, self._guard)
        # Refused, reset and timed out (even at the deadline) read the same: no port scanning.
        raise FetchUnreachable(UNREACHABLE) from last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        """Never: a fetch reaches TCP addresses only."""
        raise FetchUnreachable(UNREACHABLE)

    def sleep(self, seconds: float) -> None:
        """httpcore's retry pause, bounded by the deadline (retries are off; kept for the interface)."""
        self._guard.check()
        threading.Event().wait(min(seconds, self._guard.remaining()))
