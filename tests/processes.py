"""Real processes for tests: a Celery worker, the stream consumer, beat.

:class:`ManagedProcess` starts a command with the test session's environment,
tees its output to a log file under ``test-artifacts/``, waits for a readiness
line, and stops it with a signal, reporting the exit code and how long it took.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
VENV_BIN = Path(sys.executable).parent


class ProcessError(RuntimeError):
    """A managed process did not become ready or exited unexpectedly."""


class ManagedProcess:
    """One child process with captured output and a readiness check."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def start(self, *, ready: str | None = None, timeout: float = 60.0) -> ManagedProcess:
        """Start the process; if ``ready`` is given, wait until a line matches it."""
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if ready:
            self.wait_for(ready, timeout=timeout)
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, pattern: str, *, timeout: float = 60.0) -> None:
        """Block until a line matches ``pattern``; raise with the output if it never does."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.output):
                return
            if self.proc and self.proc.poll() is not None:
                raise ProcessError(f"{self.name} exited ({self.proc.returncode}):\n{self.output[-4000:]}")
            time.sleep(0.1)
        raise ProcessError(f"{self.name}: no line matching {pattern!r} in {timeout}s:\n{self.output[-4000:]}")

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 30.0) -> tuple[int, float]:
        """Send ``sig`` and wait; returns (exit code, seconds taken). Kills on timeout."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessError(
                f"{self.name} did not exit within {timeout}s of {sig}:\n{self.output[-4000:]}"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the whole process group (pool children included)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def worker_args(*, pool: str = "threads", concurrency: int = 2, queues: str = "runs,scheduler") -> list[str]:
    """Arguments that start a Celery worker on this project's app."""
    return [
        str(VENV_BIN / "celery"),
        "-A",
        "app.celery_app:celery_app",
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        f"--hostname=test-{pool}-{os.getpid()}-{time.monotonic_ns()}@%h",
    ]


@contextmanager
def celery_worker(
    *, pool: str = "threads", concurrency: int = 2, env: dict[str, str] | None = None
) -> Iterator[ManagedProcess]:
    """A real Celery worker for the duration of the block (killed if it will not stop)."""
    worker = ManagedProcess(f"worker-{pool}", worker_args(pool=pool, concurrency=concurrency), env=env)
    worker.start(ready=r"ready\.", timeout=90)
    try:
        yield worker
    finally:
        with suppress(ProcessError):
            worker.stop(timeout=30)
        worker.kill()
