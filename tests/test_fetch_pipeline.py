"""Fetching on a real Celery worker: refused feeds in a digest run, and a fetch cut when a run is given up.

The worker allows exactly 127.0.0.1/32 (``FETCH_ALLOW_NETWORKS``), as an
operator would for a local feed server. 127.0.0.2 stands for an internal host:
it has a real server that must never see a request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.db.models import RunStatus
from tests.local_http import Drip, LocalServer, body
from tests.plugins.harness import PLUGINS_DIR, dispatch, make_run, records, wait_for
from tests.processes import ManagedProcess, celery_worker
from tests.test_feeds import ATOM, RSS

pytestmark = pytest.mark.slow

WORKER_ENV = {
    "PLUGINS_DIR": PLUGINS_DIR,
    "LEASE_SECONDS": "2",
    "FETCH_ALLOW_NETWORKS": "127.0.0.1/32",
    "FETCH_DEADLINE_SECONDS": "3",
}


@pytest.fixture(scope="module")
def worker(pg_database: str, redis_session: redis.Redis) -> Iterator[ManagedProcess]:
    with celery_worker(pool="threads", concurrency=2, env=WORKER_ENV) as process:
        yield process


@pytest.fixture
def feeds_server() -> Iterator[LocalServer]:
    with LocalServer() as server:
        server.routes["/rss.xml"] = body(RSS)
        server.routes["/atom.xml"] = body(ATOM)
        yield server


@pytest.fixture
def internal(feeds_server: LocalServer) -> Iterator[LocalServer]:
    try:
        server = LocalServer("127.0.0.2", feeds_server.port)
    except OSError:
        server = LocalServer("127.0.0.2")
    with server:
        server.routes["/feed.xml"] = body(b"SECRET")
        yield server


def test_refused_feeds_are_reported_and_the_digest_is_built_from_the_others(
    worker: ManagedProcess, db: str, feeds_server: LocalServer, internal: LocalServer
) -> None:
    drip = Drip(interval=1.0)
    feeds_server.routes["/drip.xml"] = drip
    port = internal.port
    refused = [
        internal.url("/feed.xml"),
        f"http://2130706434:{port}/feed.xml",  # 127.0.0.2
        f"http://0x7f.2:{port}/feed.xml",
        f"http://[::ffff:127.0.0.2]:{port}/feed.xml",
        f"http://[::1]:{port}/feed.xml",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.0.0.1/feed.xml",
        "http://evil@127.0.0.2/feed.xml",
    ]
    good = [feeds_server.url("/rss.xml"), feeds_server.url("/atom.xml")]
    slow = feeds_server.url("/drip.xml")
    run_id = make_run(
        "daily-news-digest", {"topics": ["technology", "science"], "feeds": [*refused, slow, *good]}
    )
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.output is not None
    problems = dict(p.rsplit(": ", 1) for p in row.output["report"]["feed_problems"])
    assert problems == {
        **{url: "unreachable" for url in refused[:-1]},
        refused[-1]: "URLs with credentials are not fetched",
        slow: "took longer than 3 s",
    }
    content = row.output["content"]
    assert "[Quantum chip breaks a record](http://local/rss/quantum)" in content
    assert "[Comet seen from the city](http://local/atom/comet)" in content
    assert "_Some feeds could not be read:" in content
    assert "SECRET" not in str(row.output)
    assert internal.requests == []
    # The slow feed's connection was closed by the worker at the deadline.
    assert drip.hung_up.wait(30)


def test_a_run_given_up_mid_fetch_stops_downloading(
    worker: ManagedProcess, db: str, feeds_server: LocalServer, tmp_path: Path
) -> None:
    # The plugin's 2 s time limit ends the run long before the 3 s fetch deadline would;
    # the server drips forever, so only the framework's stop can end the download.
    drip = Drip(interval=0.2)
    feeds_server.routes["/drip.xml"] = drip
    record = tmp_path / "fetch.log"
    run_id = make_run("fetch-probe", {"url": feeds_server.url("/drip.xml"), "record_path": str(record)})
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == "timed out after 2 s"
    assert drip.hung_up.wait(30), "the worker kept downloading after the run was given up"
    deadline = time.monotonic() + 30
    while len(records(record, run_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert records(record, run_id) == ["start", "error FetchStopped stopped: the run was given up"]
    sent = len(drip.sent_at)
    time.sleep(1.0)
    assert len(drip.sent_at) == sent
