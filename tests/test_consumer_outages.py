"""The consumer process through Redis and PostgreSQL outages, and end to end with a real worker.

Redis: a private ``redis-server`` (append-only file on) on a free port, which
the test stops and starts again. PostgreSQL: the shared server is never
touched; the consumer reaches it through a TCP proxy that the test cuts and
restores, which looks the same from the consumer's side.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from app.db.engine import session_scope
from app.db.models import RunStatus, utcnow
from app.streams.producer import load_refs, publish_runs
from tests.conftest import TEST_DATABASE_URL
from tests.processes import celery_worker
from tests.streams_support import WAIT, add_plugin, broker_tasks, pending, publish, running, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own that persists every write, so a restart loses nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        wait_until(lambda: _pings(client), "the private Redis to answer", timeout=WAIT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # redis-server fsyncs its append-only file and exits
            self.proc.wait(timeout=30)

    def client(self, *, decode_responses: bool = True) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=decode_responses, socket_timeout=5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_outage_loses_nothing(db, private_redis: PrivateRedis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    client = private_redis.client()
    # No reclaim during the test (VISIBILITY_TIMEOUT_SECONDS): each dispatch is a first read.
    with running(REDIS_URL=private_redis.url, VISIBILITY_TIMEOUT_SECONDS="3600") as (consumer, _name):
        first = publish("alpha", 10, client=client)
        wait_until(lambda: len(broker_tasks(client)) == 10, "10 dispatches")
        private_redis.stop()
        consumer.wait_for(r"waiting for Redis at 127\.0\.0\.1", timeout=WAIT)
        assert consumer.alive()
        private_redis.start()
        consumer.wait_for(r"works again", timeout=WAIT)
        second = publish("alpha", 10, client=client)
        wait_until(lambda: len(broker_tasks(client)) == 20, "20 dispatches in all")
        assert consumer.stop(signal.SIGTERM, timeout=10)[0] == 0
    assert sorted(t.run_id for t in broker_tasks(client)) == sorted(str(r) for r in first + second)
    assert len(pending(client, "alpha")) == 20  # every entry still pending for the workers


class TcpProxy:
    """Forwards a local port to ``upstream``; :meth:`cut` drops every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._server is not None:
            # shutdown() first: close() alone would leave a thread blocked in accept() listening.
            with suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()


def test_postgres_outage_keeps_dispatching_and_recovers(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    parts = urlsplit(TEST_DATABASE_URL)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    try:
        env = {
            "DATABASE_URL": via_proxy,
            "PLUGIN_REFRESH_SECONDS": "0.2",
            "VISIBILITY_TIMEOUT_SECONDS": "3600",
        }
        with running(**env) as (consumer, _name):
            publish("alpha", 5)
            wait_until(lambda: len(broker_tasks(redis_client)) == 5, "5 dispatches")
            proxy.cut()
            consumer.wait_for(r"PostgreSQL unreachable", timeout=WAIT)
            publish("alpha", 5)  # the test's own connection does not go through the proxy
            wait_until(lambda: len(broker_tasks(redis_client)) == 10, "dispatches during the outage")
            proxy.start()
            consumer.wait_for(r"PostgreSQL reachable again", timeout=WAIT)
            assert consumer.stop(signal.SIGTERM, timeout=10)[0] == 0
    finally:
        proxy.cut()


def test_end_to_end_with_a_real_worker(db, redis_client: redis.Redis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.plugins.harness import PLUGINS_DIR, make_run, wait_for

    run_id = make_run("controlled", {"record_path": str(tmp_path / "record.log")}, status=RunStatus.PENDING)
    env = {"PLUGINS_DIR": PLUGINS_DIR}
    with celery_worker(env=env), running(**env) as (_consumer, _name):
        with session_scope() as session:
            (published,) = publish_runs(session, load_refs(session, run_ids=[run_id]), now=utcnow())
        row = wait_for(run_id)
        assert row.status == RunStatus.COMPLETED, row.error_message
        assert row.stream_id == published.stream_id
        wait_until(lambda: pending(redis_client, "controlled") == {}, "the worker to ack the entry")
