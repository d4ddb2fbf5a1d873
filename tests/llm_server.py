"""A scriptable HTTP server speaking the OpenAI chat-completions protocol, for tests and benchmarks.

It stands in for a real provider so the worker can be tested through CrewAI's
real OpenAI provider (``FIRST_SIP_LLM_MODEL=openai/<model>``, ``OPENAI_BASE_URL``
= :attr:`LLMServer.base_url`, any ``OPENAI_API_KEY``)::

    with LLMServer() as server:
        env = server.env(api_key="sk-test-...")          # OPENAI_BASE_URL/OPENAI_API_BASE/OPENAI_API_KEY
        server.enqueue(Reply(status=429, retry_after=7))  # the next request gets a 429
        server.script = lambda req: Reply(hang=True) if req.index > 3 else None
        ...
        assert server.count() == 4 and server.max_in_flight <= 2

Guarantees:

* ``POST /v1/chat/completions`` answers in CrewAI's ReAct format
  (``Thought: ...\\nFinal Answer: ...``) with content that depends only on the
  request's messages, and exact ``usage``: prompt tokens = words in all
  messages, completion tokens = words in the content. Streaming (``"stream":
  true``) sends SSE chunks over chunked transfer encoding, then, when
  ``stream_options.include_usage`` is set, a usage chunk with no choices, then
  ``data: [DONE]``. ``GET /v1/models`` lists :attr:`LLMServer.model`.
* Every chat-completion request is recorded (:class:`Request`: arrival time,
  index, path, whether it streamed, the status sent, the usage sent) as soon as
  its request line and headers are read: before its body is read and before it
  is answered. So a request that hangs, or whose body is still arriving, is
  counted too: a "no request after the run ended" check (``count(since=T)``)
  sees every request whose headers reached the server, stamped with when they
  did, never only the ones that were answered or fully read. :attr:`LLMServer.max_in_flight` is the
  most requests that were being handled at the same moment.
* What a request gets is decided, in order, by: the rate limit (``rpm_limit``:
  above that many *accepted* requests in the rolling ``window_seconds`` the
  answer is 429 with ``Retry-After`` = seconds until a slot frees, rounded up),
  then the queue (:meth:`LLMServer.enqueue`, first in first out), then
  :attr:`LLMServer.script` (a function of the :class:`Request`; ``None`` means
  the default), then :attr:`LLMServer.default` (a :class:`Reply`).
* A hung request (``Reply(hang=True)``) waits until :meth:`LLMServer.release`,
  :meth:`LLMServer.stop` or ``hang_seconds``; it never keeps the test process
  alive (handler threads are daemons).

It binds 127.0.0.1 on a free port and needs nothing outside the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "gpt-4o-mini"
#: How long a hung request waits at most if nobody releases it.
DEFAULT_HANG_SECONDS = 600.0


@dataclass(frozen=True)
class Reply:
    """How to answer one request. The default is a correct 200 answer."""

    status: int = 200
    #: The assistant's text; None: ``Thought: ...\\nFinal Answer: <deterministic text>``.
    content: str | None = None
    #: Sent as the ``Retry-After`` header (seconds, or any text) when set.
    retry_after: float | str | None = None
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Wait until released (or ``hang_seconds``), then answer as configured.
    hang: bool = False
    hang_seconds: float = DEFAULT_HANG_SECONDS
    #: A 200 whose body is not valid JSON (for a stream: a chunk that is not JSON).
    malformed: bool = False
    #: Close the connection before the body is complete (Content-Length larger than what is sent;
    #: for a stream: no terminating chunk and no ``[DONE]``).
    truncated: bool = False
    #: Override the usage reported (defaults: word counts).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The error message of a non-200 answer (OpenAI's ``{"error": {...}}`` shape).
    error_message: str | None = None
    #: Native tool calls to answer with instead of text (non-streaming only): (tool name, arguments).
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass
class Request:
    """One request the server received (recorded on arrival; ``status`` once answered)."""

    index: int  # 1-based, in arrival order
    at: float  # time.time() on arrival
    monotonic: float  # time.monotonic() on arrival
    method: str
    path: str
    body: dict[str, Any] | None
    authorization: str | None
    stream: bool = False
    status: int | None = None
    usage: dict[str, int] | None = None
    finished_at: float | None = None

    @property
    def model(self) -> str | None:
        """The model the client asked for."""
        return (self.body or {}).get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages sent."""
        value = (self.body or {}).get("messages")
        return value if isinstance(value, list) else []

    @property
    def include_usage(self) -> bool:
        """True if a streaming client asked for the usage chunk."""
        options = (self.body or {}).get("stream_options") or {}
        return bool(options.get("include_usage"))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def prompt_words(messages: list[dict[str, Any]]) -> int:
    """The prompt token count the server reports: words across all message contents."""
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def default_content(messages: list[dict[str, Any]]) -> str:
    """The deterministic ReAct answer for ``messages``."""
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    digest = hashlib.sha256(last_user.encode()).hexdigest()[:12]
    return (
        "Thought: I now know the final answer\n"
        f"Final Answer: This is the test server's answer {digest}. It has exactly twelve words."
    )


class LLMServer:
    """The server; see the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        rpm_limit: int | None = None,
        window_seconds: float = 60.0,
        default: Reply | None = None,
        script: Callable[[Request], Reply | None] | None = None,
    ) -> None:
        self.model = model
        self.rpm_limit = rpm_limit
        self.window_seconds = window_seconds
        self.default = default or Reply()
        self.script = script
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[Reply] = deque()
        self._accepted: deque[float] = deque()  # monotonic times of requests let through the limit
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> LLMServer:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        self._released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what OPENAI_BASE_URL should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self, *, api_key: str = "sk-test-llm-server-key", model: str | None = None) -> dict[str, str]:
        """Environment for a worker that should use this server through CrewAI's OpenAI provider."""
        return {
            "FIRST_SIP_LLM_MODEL": f"openai/{model or self.model}",
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_BASE": self.base_url,
            "OPENAI_API_KEY": api_key,
        }

    # ---- scripting -------------------------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order (after the rate limit check)."""
        with self._lock:
            self._queue.extend(replies)

    def release(self) -> None:
        """Let every hung request (now and later) answer."""
        self._released.set()

    def rehang(self) -> None:
        """Undo :meth:`release`: later ``hang`` replies hang again."""
        self._released.clear()

    def reset(self) -> None:
        """Forget recorded requests, the queue and the in-flight maximum (the rate window too)."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._accepted.clear()
            self.max_in_flight = self.in_flight

    # ---- observations ----------------------------------------------------------------------

    def completions(self) -> list[Request]:
        """A snapshot of the chat-completion requests received so far."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def count(self, *, since: float | None = None, status: int | None = None) -> int:
        """Chat-completion requests received (at or after ``since``, a time.time(); with ``status``)."""
        return sum(
            1
            for r in self.completions()
            if (since is None or r.at >= since) and (status is None or r.status == status)
        )

    def usage_sent(self) -> dict[str, int]:
        """The usage the server reported, summed over every successful answer."""
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "requests": 0}
        for r in self.completions():
            if r.usage:
                total["requests"] += 1
                for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    total[key] += r.usage[key]
        return total

    def wait_for(self, count: int, *, timeout: float = 60.0) -> list[Request]:
        """Block until at least ``count`` chat-completion requests arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.completions()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"the LLM server got {len(self.completions())} requests, expected {count}")

    # ---- used by the handler ---------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            request.index = len(self.requests) + 1
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _decide(self, request: Request) -> Reply:
        with self._lock:
            limited = self._rate_limited(request.monotonic)
            if limited is not None:
                return limited
            if self._queue:
                return self._queue.popleft()
            script = self.script
        reply = script(request) if script is not None else None
        return reply or self.default

    def _rate_limited(self, now: float) -> Reply | None:
        if self.rpm_limit is None:
            return None
        while self._accepted and self._accepted[0] <= now - self.window_seconds:
            self._accepted.popleft()
        if len(self._accepted) >= self.rpm_limit:
            wait = self._accepted[0] + self.window_seconds - now
            return Reply(
                status=429,
                retry_after=max(1, math.ceil(wait)),
                error_message=f"Rate limit reached: {self.rpm_limit} requests per {self.window_seconds:g} s",
            )
        self._accepted.append(now)
        return None

    def _delivering(self, request: Request, usage: dict[str, int]) -> None:
        """Note the usage of an answer about to be sent: a client that has read it can count on it."""
        with self._lock:
            request.status = 200
            request.usage = usage

    def _leave(self, request: Request, status: int, usage: dict[str, int] | None) -> None:
        with self._lock:
            request.status = status
            request.usage = usage
            request.finished_at = time.time()
            self.in_flight -= 1

    def _wait_released(self, seconds: float) -> None:
        self._released.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    """One connection. HTTP/1.1 with keep-alive, like the OpenAI SDK expects."""

    protocol_version = "HTTP/1.1"
    server_state: LLMServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            model = self.server_state.model
            self._json(
                200, {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]}
            )
        else:
            self._json(404, _error("not found", "invalid_request_error"))

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._json(404, _error(f"unknown path {self.path}", "invalid_request_error"))
            return
        state = self.server_state
        # Recorded as soon as its request line and headers are in, before the body is read: a
        # request the client has begun to send is already counted (and stamped) when the test looks.
        request = Request(
            index=0,
            at=time.time(),
            monotonic=time.monotonic(),
            method="POST",
            path=self.path,
            body=None,
            authorization=self.headers.get("Authorization"),
        )
        state._record(request)
        status, usage = 500, None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            request.body = body if isinstance(body, dict) else None
            request.stream = bool(isinstance(body, dict) and body.get("stream"))
            reply = state._decide(request)
            status, usage = self._answer(request, reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            state._leave(request, status, usage)

    # ---- answering -------------------------------------------------------------------------

    def _answer(self, request: Request, reply: Reply) -> tuple[int, dict[str, int] | None]:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.hang:
            self.server_state._wait_released(reply.hang_seconds)
        if request.body is None:
            self._json(400, _error("the request body is not a JSON object", "invalid_request_error"))
            return 400, None
        if reply.status != 200:
            self._error_reply(request, reply)
            return reply.status, None
        content = reply.content if reply.content is not None else default_content(request.messages)
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words(request.messages)
        completion = reply.completion_tokens if reply.completion_tokens is not None else len(content.split())
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if request.stream:
            sent = self._stream(request, reply, content, usage)
            return 200, (usage if sent else None)
        if reply.malformed or reply.truncated:
            self._broken_body(reply)
            return 200, None
        # Noted before the body is written: the client may read it and ask for usage_sent() before
        # this thread reaches _leave.
        self.server_state._delivering(request, usage)
        self._json(200, self._completion(request, reply, content, usage))
        return 200, usage

    def _error_reply(self, request: Request, reply: Reply) -> None:
        kinds = {
            400: ("invalid_request_error", None),
            401: ("invalid_request_error", "invalid_api_key"),
            403: ("permission_denied", None),
            404: ("invalid_request_error", "model_not_found"),
            429: ("rate_limit_exceeded", "rate_limit_exceeded"),
        }
        kind, code = kinds.get(reply.status, ("server_error", None))
        message = reply.error_message or {
            401: f"Incorrect API key provided: {_masked(request.authorization)}.",
            404: f"The model `{request.model}` does not exist or you do not have access to it.",
            429: "Rate limit reached for requests.",
        }.get(reply.status, f"The server had an error (test status {reply.status}).")
        headers = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
        self._json(reply.status, _error(message, kind, code), headers=headers)

    def _completion(
        self, request: Request, reply: Reply, content: str, usage: dict[str, int]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.tool_calls:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{request.index}_{number}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                    for number, (name, arguments) in enumerate(reply.tool_calls)
                ],
            }
        return {
            "id": f"chatcmpl-test-{request.index}",
            "object": "chat.completion",
            "created": int(request.at),
            "model": request.model or self.server_state.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }

    def _stream(self, request: Request, reply: Reply, content: str, usage: dict[str, int]) -> bool:
        """Send an SSE stream; True if it was complete (the usage was delivered)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        base = {
            "id": f"chatcmpl-test-{request.index}",
            "object": "chat.completion.chunk",
            "created": int(request.at),
            "model": request.model or self.server_state.model,
        }
        pieces = _pieces(content)
        for number, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece}
            if number == 0:
                delta["role"] = "assistant"
            self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if reply.truncated and number == len(pieces) // 2:
                self.close_connection = True
                self.wfile.flush()
                return False  # no terminating chunk: the client sees an incomplete body
        if reply.malformed:
            self._chunk(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
        self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if request.include_usage:
            if not reply.malformed:
                self.server_state._delivering(request, usage)
            self._event({**base, "choices": [], "usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        return not reply.malformed

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _broken_body(self, reply: Reply) -> None:
        body = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        # Truncated: promise more than is sent, then close. Malformed: an honest length of bad JSON.
        self.send_header("Content-Length", str(len(body) + (500 if reply.truncated else 0)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def _json(self, status: int, payload: dict[str, Any], *, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _masked(authorization: str | None) -> str:
    """What OpenAI echoes for a wrong key: a few leading characters, stars, the last four."""
    key = (authorization or "").removeprefix("Bearer ").strip()
    if len(key) < 12:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def _pieces(content: str) -> list[str]:
    words = content.split(" ")
    size = max(1, len(words) // 4)
    pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]
