"""The test LLM server itself: what it records, and when."""

from __future__ import annotations

import socket
import time

from tests.llm_server import LLMServer


def test_a_request_is_recorded_as_soon_as_its_headers_arrive_before_its_body() -> None:
    with LLMServer() as server:
        before = time.time()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            # Headers promise a body that never comes: the handler is still reading it.
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model": '
            )
            (request,) = server.wait_for(1, timeout=10)
            assert request.status is None and request.body is None
            assert request.at >= before
            assert server.count(since=before) == 1 and server.in_flight == 1
