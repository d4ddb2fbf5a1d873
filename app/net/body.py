"""Reading a response body under a size cap, decompression included.

httpx would inflate each compressed chunk whole (a 64 KB gzip chunk can
become 64 MB), so the fetcher reads the raw bytes and inflates them here with
``max_length``: memory stays bounded by the cap whatever the server sends.

Guarantees: :meth:`BoundedBody.feed` keeps at most ``max_bytes`` decoded
bytes and raises :class:`FetchFailed` (``"larger than N bytes"``) as soon as
the body would be larger; raw bytes are capped at twice the limit (a
compressed stream that decodes to nothing still ends). Only ``identity``,
``gzip`` and ``deflate`` are accepted (the fetcher asks for nothing else);
anything else, or corrupt compressed data, is a :class:`FetchFailed`.
"""

from __future__ import annotations

import zlib

from app.net.errors import FetchFailed

#: Content-Encoding values we can inflate, and the zlib window that reads them.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BoundedBody:
    """Collects one response body, decoded, refusing to grow past ``max_bytes``."""

    def __init__(self, *, content_encoding: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._raw = 0
        encoding = content_encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
            self._deflate = False
        elif encoding in _WBITS:
            self._inflater = zlib.decompressobj(_WBITS[encoding])
            self._deflate = encoding == "deflate"
        else:
            raise FetchFailed("unsupported content encoding")

    def too_large(self) -> FetchFailed:
        """The error for a body over the cap."""
        return FetchFailed(f"larger than {self.max_bytes} bytes")

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_bytes:
            raise self.too_large()
        if data:
            self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        """Add one raw chunk of the body."""
        self._raw += len(chunk)
        if self._raw > 2 * self.max_bytes:
            raise self.too_large()
        if self._inflater is None:
            self._keep(chunk)
            return
        data = chunk
        try:
            while data:
                self._keep(self._inflater.decompress(data, self.max_bytes - self._size + 1))
                data = self._inflater.unconsumed_tail
        except zlib.error as exc:
            if self._deflate and self._raw == len(chunk) and self._size == 0:
                # "deflate" is sometimes sent raw (no zlib header), as httpx also tolerates.
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                self._deflate = False
                self._raw -= len(chunk)
                self.feed(chunk)
                return
            raise FetchFailed("corrupt compressed body") from exc

    def finish(self) -> bytes:
        """The whole decoded body."""
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush(self.max_bytes - self._size + 1))
            except zlib.error as exc:
                raise FetchFailed("corrupt compressed body") from exc
        return b"".join(self._parts)
