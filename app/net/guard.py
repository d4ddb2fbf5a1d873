"""One fetch's total deadline and stop signal, enforced on its sockets.

A socket timeout bounds one read, not a fetch: a server that sends one byte a
second never trips it. A :class:`FetchGuard` bounds the whole fetch. Every
blocking step clamps its own timeout to the time left (a lookup, a connect, a
read, a TLS handshake), so the last one ends at the deadline. A read that is
simply waiting would notice the run's ``stopped`` event only then, so a
watchdog thread shuts the fetch's open sockets down the moment ``stopped`` is
set (and, belt and braces, when the deadline passes), which wakes any read
blocked on them at once.

Guarantees: after :meth:`FetchGuard.close` returns, the watchdog thread has
ended and every socket of this fetch still registered has been shut down, so
no thread keeps downloading for it (the fetcher closes them just before). A
socket is shut down only while the stream that owns it is open (both happen
under one lock), so a file descriptor number reused after close is never
touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from app.net.errors import FetchError, FetchStopped, FetchTimedOut

#: How often the watchdog looks at the run's stop event (seconds).
STOP_POLL_SECONDS = 0.1


class FetchGuard:
    """The deadline and stop signal of one fetch, and the sockets it has open."""

    def __init__(
        self,
        *,
        deadline_seconds: float,
        stopped: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deadline_seconds = deadline_seconds
        self._clock = clock
        self._deadline = clock() + deadline_seconds
        self._stopped = stopped
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._done = threading.Event()
        self._tripped: FetchError | None = None
        self._watchdog: threading.Thread | None = None
        #: True once the current request got a response (status line and headers): until then,
        #: a deadline reads like any other failure to reach the host (app.net.fetch).
        self.answered = False

    # ---- time ------------------------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self._deadline - self._clock())

    def clamp(self, timeout: float | None) -> float:
        """``timeout`` cut to the time left; raises if the fetch is over."""
        self.check()
        left = self.remaining()
        return left if timeout is None else min(timeout, left)

    def check(self) -> None:
        """Raise :class:`FetchTimedOut` or :class:`FetchStopped` if the fetch must end now."""
        if self._tripped is not None:
            raise self._tripped
        if self.remaining() <= 0:
            raise self._trip(self.timed_out())
        self.check_stopped()

    def check_stopped(self) -> None:
        """Raise :class:`FetchStopped` if the run was given up (whatever the time left)."""
        if self._stopped is not None and self._stopped.is_set():
            raise self._trip(FetchStopped("stopped: the run was given up"))

    def timed_out(self) -> FetchTimedOut:
        """The error a fetch past its deadline raises."""
        return FetchTimedOut(f"took longer than {self.deadline_seconds:g} s")

    @property
    def tripped(self) -> FetchError | None:
        """Why the fetch was cut off, once it was (deadline or stop)."""
        return self._tripped

    def _trip(self, error: FetchError) -> FetchError:
        with self._lock:
            if self._tripped is None:
                self._tripped = error
            return self._tripped

    # ---- sockets ---------------------------------------------------------------------------

    def register(self, sock: socket.socket) -> None:
        """Watch ``sock``: it is shut down if the deadline passes or the run stops while it is open."""
        with self._lock:
            self._sockets[id(sock)] = sock
            start = self._watchdog is None
            if start:
                self._watchdog = threading.Thread(target=self._watch, name="fetch-watchdog", daemon=True)
        if start:
            assert self._watchdog is not None
            self._watchdog.start()

    def close_socket(self, sock: socket.socket, close: Any) -> None:
        """Forget ``sock`` and run ``close()`` under the lock, so the watchdog never sees a reused fd."""
        with self._lock:
            self._sockets.pop(id(sock), None)
            close()

    def _watch(self) -> None:
        while True:
            left = self.remaining()
            wait = left if self._stopped is None else min(left, STOP_POLL_SECONDS)
            if self._done.wait(wait):
                return
            if self._stopped is not None and self._stopped.is_set():
                self._cut(FetchStopped("stopped: the run was given up"))
                return
            if self.remaining() <= 0:
                self._cut(self.timed_out())
                return

    def _cut(self, error: FetchError) -> None:
        with self._lock:
            if self._tripped is None:
                self._tripped = error
            for sock in self._sockets.values():
                _shutdown(sock)

    def close(self) -> None:
        """End the watchdog and shut down any socket still open (the fetch is over); idempotent."""
        self._done.set()
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join()
        with self._lock:
            for sock in self._sockets.values():
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # The base-class method: SSLSocket.shutdown would also drop its SSL object, racing the
    # reader; a plain shutdown(2) just makes a blocked read return at once.
    with contextlib.suppress(OSError):  # already closed, or the peer reset it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
