"""Starting and stopping local child processes (the demo, ``make run``-like tooling, tests).

Guarantees: every child runs in its own session with its output in a log
file; :meth:`Supervisor.stop_all` sends SIGTERM to each (last started first),
waits up to its timeout, SIGKILLs what is left, and reports each exit code.
Nothing here is used by the deployed processes themselves.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import FirstSipError


class SupervisorError(FirstSipError):
    """A child did not become ready, or exited early; the message holds its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, size: int = 3000) -> str:
        """The end of the child's output."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        """Block until the log matches ``pattern``; raise with the log tail if it never does."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.log_tail(200_000)):
                return
            if self.proc.poll() is not None:
                raise SupervisorError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise SupervisorError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")


@dataclass
class Supervisor:
    """A set of children started together and stopped together."""

    log_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], *, ready: str | None = None, timeout: float = 120.0) -> Child:
        """Start ``args``; if ``ready`` is given, wait for a log line matching it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # the log handle is inherited; the child owns it
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        if ready:
            child.wait_for(ready, timeout)
        return child

    def stop_all(self, *, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every child (newest first), then SIGKILL stragglers; returns exit codes."""
        codes: dict[str, int | None] = {}
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            try:
                codes[child.name] = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=10)
                codes[child.name] = None  # had to be killed
        self.children.clear()
        return codes
