"""Build each plugin's crew the way a worker would, without running it: the child of ``plugins validate``.

Run as ``python -m app.execution.dryrun [--timeout S] FOLDER...`` by
:mod:`app.plugins.buildcheck` (the parent CLI never imports CrewAI). This
process imports CrewAI once, then builds each plugin in a forked child of its
own, so one plugin's import-time side effects (module state, patches, a
blocking import) cannot touch another's result. Each child runs in a process
group of its own, killed as a whole once its result is read or when it passes
``--timeout`` (so processes a plugin starts at import time die with it), and
with its address space capped at ``--memory-mb`` more than the checker's (an
import that allocates without bound fails that plugin only). Each child loads the plugin as the worker does,
gives it the offline model and the plugin's ``default_config`` (merged over
the schema's defaults) as settings, builds the crew through
:func:`app.execution.entry.build` (so it checks what every run checks: LLM
injection, placeholders filled, YAML valid, output files in the run's
folder) and evicts what it built. Nothing is kicked off.

One line per plugin is printed on stdout: :data:`RESULT_PREFIX` then JSON
``{"folder", "plugin", "ok", "problems": [{"file", "key", "message", "line"}],
"notes"}`` (and ``"traceback"`` when the build raised unexpectedly: for the
caller's debug log, never shown as the reason). A plugin's own prints go to /dev/null.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.errors import PermanentError, PluginError
from app.plugins.buildcheck import MEMORY_LIMIT_MB, RESULT_PREFIX
from app.plugins.manifest import MANIFEST_FILE


def _problem(file: str, message: str, key: str = "") -> dict[str, Any]:
    return {"file": file, "key": key, "message": message, "line": None}


def _build(folder: Path) -> dict[str, Any]:
    """Build the plugin in ``folder`` (in this process); its result."""
    from app.execution import entry
    from app.execution.contract import CrewContext
    from app.execution.crew_loader import entry_point_file
    from app.execution.offline_llm import OfflineLLM
    from app.llm_config import OFFLINE_MODEL
    from app.plugins.loader import _origin
    from app.plugins.registry import load_plugin
    from app.plugins.settings import validate_settings

    result: dict[str, Any] = {"folder": str(folder), "plugin": folder.name, "ok": False, "notes": []}
    try:
        plugin = load_plugin(folder)
        result["plugin"] = plugin.name
        with tempfile.TemporaryDirectory(prefix="build-check-") as scratch:
            ctx = CrewContext.create(
                run_id="build-check",
                plugin=plugin.name,
                settings=validate_settings(plugin.spec, None),
                llm=OfflineLLM(model=OFFLINE_MODEL),
                folder=plugin.folder,
                crew_folder=entry_point_file(plugin)[0].parent,
                workdir=Path(scratch),
            )
            built = entry.build(plugin, ctx)
            with built.running():
                pass  # evicts a @CrewBase instance, as after a run
        facts = built.report()
        if facts["model_overrides"]:
            result["notes"].append(
                "the crew names models (" + ", ".join(facts["model_overrides"]) + "); "
                "the framework's model replaces them"
            )
        if facts["memory_disabled"]:
            result["notes"].append("crew memory is turned off in workers (it would keep users' data)")
        result["ok"] = True
    except PluginError as exc:
        result["problems"] = [asdict(p) for p in exc.problems]
    except PermanentError as exc:
        result["problems"] = [_problem(str(folder / MANIFEST_FILE), str(exc), "entry_point")]
    except Exception as exc:  # plugin code: any failure is this plugin's problem
        where = _origin(folder, exc)
        at = f" (at {where})" if where else ""
        message = f"building the crew failed: {type(exc).__name__}: {exc}{at}"
        result["problems"] = [_problem(str(folder / MANIFEST_FILE), message, "entry_point")]
        result["traceback"] = traceback.format_exc(limit=-30)  # for the caller's debug log only
    return result


def _read_result(fd: int, deadline: float) -> bytes | None:
    """The child's result line (up to its newline, or all it wrote before EOF); None at the deadline.

    Reading stops at the newline, not at EOF: a process the plugin started
    inherits the pipe and may keep it open long after the result was written.
    """
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)[:-1]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size plus ``extra_bytes`` (Linux; best effort)."""
    import resource

    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes if hard == resource.RLIM_INFINITY else min(size + extra_bytes, hard)
    # Soft and hard alike: the plugin cannot raise it again.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the check process dies (a killed check leaves no builder)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, signal.SIGKILL)


def _forked(folder: Path, timeout: float, memory_bytes: int) -> dict[str, Any]:
    """Build the plugin in a forked child, in a process group of its own with a memory cap.

    Whatever the plugin started (a child that sleeps forever, a fork bomb's
    first generation) is in that group and is killed with it once the result
    is read or the time is up; an import that allocates without bound fails
    at the cap, in that child only.
    """
    from app.execution import runtime

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: silence the plugin, build, report, exit without cleanup handlers
        code = 0
        try:
            os.setpgid(0, 0)
            _die_with_parent()
            os.close(read_fd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            runtime.after_fork()
            _limit_memory(memory_bytes)
            result = _build(folder)
            _write_all(write_fd, json.dumps(result).encode() + b"\n")
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    with contextlib.suppress(OSError):  # the child did it first (or is gone)
        os.setpgid(pid, pid)  # also here: the group must exist before we might kill it
    os.close(write_fd)
    try:
        data = _read_result(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
        _kill_group(pid)  # the builder, if still there, and everything the plugin started
    os.waitpid(pid, 0)
    if data is None:
        return _failed(folder, f"importing and building the crew took longer than {timeout:g} s")
    if not data:
        return _failed(folder, "the build check died while building the crew (the plugin exited or crashed)")
    return dict(json.loads(data))


def _failed(folder: Path, message: str) -> dict[str, Any]:
    problem = _problem(str(folder / MANIFEST_FILE), message, "entry_point")
    return {"folder": str(folder), "plugin": folder.name, "ok": False, "notes": [], "problems": [problem]}


def main(argv: list[str] | None = None) -> int:
    """Check every folder given; print one result line each."""
    parser = argparse.ArgumentParser(prog="python -m app.execution.dryrun")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--memory-mb", type=int, default=MEMORY_LIMIT_MB)
    parser.add_argument("folders", nargs="*", type=Path)
    args = parser.parse_args(argv)
    from app.execution import runtime

    runtime.prepare()
    for folder in args.folders:
        result = _forked(folder, args.timeout, args.memory_mb * 1024 * 1024)
        sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
