"""Check that each plugin's crew builds, from a process that must not import CrewAI.

``plugins validate`` and ``release`` call :func:`check_builds`; it runs
:mod:`app.execution.dryrun` in a subprocess (CrewAI is imported there, and
each plugin is built in a forked child with a time limit), in a scratch
current directory so nothing a plugin writes at import time lands in the
caller's. The check runs in a session of its own (at the time limit its whole process
group is killed) and builds each plugin in a process group of its own with
a memory cap (see :mod:`app.execution.dryrun`): a plugin that starts
processes or allocates without bound at import time fails alone. Guarantees:
one :class:`BuildResult` per plugin asked about; a
plugin the subprocess never reported on (it crashed, or the whole check ran
out of time) gets a problem saying so. :class:`BuildCheckError` means the
check itself could not run (the deploy must stop, not skip the check); its
message is one line (the failure's last line), the whole traceback goes to
this module's debug log, as does the traceback of a plugin whose build raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import FirstSipError, Problem
from app.plugins.manifest import MANIFEST_FILE

if TYPE_CHECKING:
    from app.plugins.registry import Plugin, Registry

log = logging.getLogger(__name__)

#: Starts each result line the subprocess (:mod:`app.execution.dryrun`) prints; it imports this one.
RESULT_PREFIX = "FIRST-SIP-BUILD-CHECK "
#: The module the subprocess runs (``python -m``).
DRYRUN_MODULE = "app.execution.dryrun"
#: Address space (MiB) one plugin's build may add before its allocations fail (``--memory-mb``).
MEMORY_LIMIT_MB = 1024
#: Characters of the one reason line a user sees when the check cannot run.
MAX_REASON_CHARS = 300
#: Seconds the subprocess may spend importing CrewAI before the first plugin.
STARTUP_SECONDS = 120.0


class BuildCheckError(FirstSipError):
    """The build check subprocess could not run at all."""


@dataclass
class BuildResult:
    """Whether one plugin's crew builds; its problems, and notes (what the framework overrides)."""

    plugin: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the crew built with no problem."""
        return not self.problems


def _environment(scratch: str) -> dict[str, str]:
    from app.execution.runtime import CREWAI_ENV_DEFAULTS  # a constant; imports no CrewAI

    env = {**CREWAI_ENV_DEFAULTS, **os.environ}
    # CrewAI makes storage folders under the user's data dir when a crew is built (memory):
    # keep them in the scratch folder, removed with it.
    env["XDG_DATA_HOME"] = str(Path(scratch) / "data")
    # The child must import this checkout's ``app`` whatever its current directory is.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _parse(stdout: str) -> dict[str, dict[str, object]]:
    results = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            results[str(data["folder"])] = data
    return results


def _reason(stderr: str) -> str:
    """The one line worth showing of a failed subprocess: the last line it wrote (the exception)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= MAX_REASON_CHARS else last[: MAX_REASON_CHARS - 1] + "…"


def _result(name: str, data: dict[str, object] | None, folder: Path, why_missing: str) -> BuildResult:
    if data is not None and data.get("traceback"):
        log.debug("plugin %s: building its crew failed:\n%s", name, data["traceback"])
    if data is None:
        return BuildResult(name, [Problem(str(folder / MANIFEST_FILE), "entry_point", why_missing)])
    problems = [Problem(**p) for p in data.get("problems") or []]  # type: ignore[attr-defined]
    return BuildResult(name, problems, list(data.get("notes") or []))  # type: ignore[call-overload]


def _run(command: list[str], scratch: str, limit: float) -> tuple[str, str, int | None]:
    """(stdout, stderr, exit status or None if it ran out of time) of the check, in a session of its own.

    At the time limit the whole process group is killed (the check and any
    process it started that stayed in it), so reading its output cannot hang.
    """
    try:
        proc = subprocess.Popen(
            command,
            cwd=scratch,
            env=_environment(scratch),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise BuildCheckError(f"the build check could not start: {exc}") from exc
    try:
        stdout, stderr = proc.communicate(timeout=limit)
        return stdout, stderr, proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return stdout, stderr, None


def check_builds(
    plugins: list[Plugin], *, timeout: float, memory_mb: int = MEMORY_LIMIT_MB
) -> dict[str, BuildResult]:
    """Build every plugin's crew in a subprocess, ``timeout`` s and ``memory_mb`` MiB each; by plugin name."""
    if not plugins:
        return {}
    folders = {str(p.folder.resolve()): p for p in plugins}
    command = [sys.executable, "-m", DRYRUN_MODULE, "--timeout", str(timeout)]
    command += ["--memory-mb", str(memory_mb), *folders]
    limit = STARTUP_SECONDS + (timeout + 5) * len(plugins)
    with tempfile.TemporaryDirectory(prefix="first-sip-build-check-") as scratch:
        stdout, stderr, code = _run(command, scratch, limit)
    if code is None:
        why = f"the build check as a whole took longer than {limit:g} s"
    else:
        why = f"the build check exited with status {code}"
        if code != 0 and RESULT_PREFIX not in stdout:
            # The traceback is for the operator's debug log; the user gets its last line.
            log.debug("the build check exited with status %s; its stderr:\n%s", code, stderr)
            raise BuildCheckError(f"the build check could not run: {_reason(stderr) or why}")
    found = _parse(stdout)
    return {p.name: _result(p.name, found.get(key), p.folder, why) for key, p in folders.items()}


def check_registry(registry: Registry, *, timeout: float) -> list[str]:
    """Build every loaded plugin's crew; reject those that fail (into ``registry.problems``).

    Returns notes worth printing (e.g. a model a crew names that the framework replaced).
    """
    results = check_builds(sorted(registry.plugins.values(), key=lambda p: p.name), timeout=timeout)
    notes: list[str] = []
    for name, result in sorted(results.items()):
        notes.extend(f"note: {name}: {note}" for note in result.notes)
        if not result.ok:
            registry.reject(name, result.problems, build=True)
    registry.build_checked = True
    return notes
