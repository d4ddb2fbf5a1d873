"""Each run's scratch folder: where its crew writes files, recorded with the output, then removed.

Guarantees:

* :func:`create` makes a new, private (0700) folder per run under
  ``RUN_WORKDIR_ROOT`` (default: the system temp dir); two attempts of one run
  never share one.
* :func:`confine_outputs` rewrites every task's ``output_file`` (after filling
  its ``{placeholders}`` from the run's inputs, which are user settings and
  therefore hostile) and the crew's ``output_log_file`` to absolute paths
  inside the folder, or raises :class:`PermanentError` naming the task. A
  worker runs many crews in threads of one process, so the current directory
  cannot be per run: paths are rewritten instead.
* :func:`collect` lists the regular files under the folder (symlinks are
  never followed), with small UTF-8 text files inline: at most
  :data:`MAX_FILES` files, :data:`MAX_INLINE_BYTES` per file and
  :data:`MAX_INLINE_TOTAL` in all; the rest are listed with their size.
* :func:`remove` deletes the folder and everything in it; it never raises.
  :func:`sweep` (at worker start) removes run folders older than any run can
  last, left by a worker that was killed.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from app.errors import PermanentError
from app.plugins.paths import PathEscapeError, resolve_inside

log = logging.getLogger(__name__)

MAX_FILES = 50
MAX_INLINE_BYTES = 64 * 1024
MAX_INLINE_TOTAL = 256 * 1024
#: Where CrewAI writes ``output_log_file=True``.
DEFAULT_LOG_FILE = "logs.txt"


def base(root: Path | None) -> Path:
    """The folder run folders are made in: ``RUN_WORKDIR_ROOT`` or ``<temp dir>/first-sip-runs``."""
    return root or Path(tempfile.gettempdir()) / "first-sip-runs"


_made: set[Path] = set()


def create(run_id: str, root: Path | None = None) -> Path:
    """A new empty folder for one run (private to this user)."""
    folder = base(root)
    if folder not in _made:  # once per process, not per run (it is re-made if it disappears)
        folder.mkdir(parents=True, exist_ok=True)
        _made.add(folder)
    try:
        return Path(tempfile.mkdtemp(prefix=f"run-{run_id[:8]}-", dir=folder))
    except FileNotFoundError:
        _made.discard(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _made.add(folder)
        return Path(tempfile.mkdtemp(prefix=f"run-{run_id[:8]}-", dir=folder))


def sweep(root: Path | None, *, older_than: float) -> int:
    """Remove run folders not modified for ``older_than`` seconds (a killed worker's); how many."""
    import time

    folder = base(root)
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for child in folder.glob("run-*"):
        try:
            stale = child.is_dir() and not child.is_symlink() and child.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            remove(child)
            removed += 1
    return removed


def remove(folder: Path | None) -> None:
    """Delete ``folder`` and its contents (best effort: a failure is logged, never raised)."""
    if folder is None:
        return
    try:
        os.rmdir(folder)  # the usual case: the crew left nothing behind
        return
    except OSError:
        pass
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the run folder %s: %s", folder, exc)


def check_relative(path: str) -> str | None:
    """Why ``path`` cannot be a file in a run's folder, or None if it can.

    Used on paths a plugin wrote down (YAML ``output_file``); it needs no folder.
    """
    try:
        resolve_inside(Path(tempfile.gettempdir()), path.replace("{", "").replace("}", ""))
    except PathEscapeError as exc:
        return f"must stay inside the run's folder: {exc}"
    return None


def _inside(folder: Path, relative: str, where: str) -> Path:
    if "{" in relative or "}" in relative:
        raise PermanentError(f"{where}: {relative!r} still holds a placeholder after filling the inputs")
    try:
        return resolve_inside(folder, relative)
    except PathEscapeError as exc:
        raise PermanentError(f"{where} must stay inside the run's folder: {exc}") from exc


def confine_outputs(crew: Any, folder: Path, inputs: dict[str, Any]) -> None:
    """Point every file the crew will write into ``folder`` (see the module docstring)."""
    tasks = [task for task in getattr(crew, "tasks", []) or [] if getattr(task, "output_file", None)]
    log_file = getattr(crew, "output_log_file", None)
    if not tasks and not log_file:
        return  # nothing to confine: spare resolving the folder
    from crewai.utilities.string_utils import interpolate_only

    root = folder.resolve()
    for index, task in enumerate(getattr(crew, "tasks", []) or []):
        original = getattr(task, "output_file", None)
        if not original:
            continue
        where = f"task {getattr(task, 'name', None) or f'#{index + 1}'!r} output_file"
        path = Path(original)
        if path.is_absolute() and path.is_relative_to(root):
            continue  # already confined (a crew built twice from one object)
        try:
            filled = interpolate_only(input_string=original, inputs=inputs)
        except (KeyError, ValueError) as exc:
            raise PermanentError(f"{where}: cannot fill {original!r}: {exc}") from exc
        task.output_file = str(_inside(root, filled, where))
        task.create_directory = True
    if log_file:
        from crewai.utilities.file_handler import FileHandler

        name = DEFAULT_LOG_FILE if log_file is True else str(log_file)
        target = _inside(root, name, "crew output_log_file")
        crew.output_log_file = str(target)
        crew._file_handler = FileHandler(str(target))


def _read_small(path: Path, size: int) -> str | None:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(size + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def collect(folder: Path) -> list[dict[str, Any]]:
    """The files the run left in ``folder``, sorted by path (see the module docstring)."""
    if not folder.is_dir():
        return []
    found: list[tuple[str, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.append((path.relative_to(folder).as_posix(), path, info.st_size))
    found.sort()
    files: list[dict[str, Any]] = []
    budget = MAX_INLINE_TOTAL
    for relative, path, size in found[:MAX_FILES]:
        entry: dict[str, Any] = {"path": relative, "bytes": size}
        text = _read_small(path, size) if size <= min(MAX_INLINE_BYTES, budget) else None
        if text is not None:
            entry["text"] = text
            budget -= size
        files.append(entry)
    if len(found) > MAX_FILES:
        files.append({"path": f"... {len(found) - MAX_FILES} more files not listed", "bytes": 0})
    return files
