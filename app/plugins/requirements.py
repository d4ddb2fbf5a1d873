"""A plugin's ``requirements.txt``, checked against what is installed before the plugin may run.

A crew that imports a package the worker does not have fails on every run.
:func:`requirement_problems` reads ``requirements.txt`` next to the entry
point (``crew/requirements.txt``) and at the plugin's root, parses each line
with ``packaging``'s requirement parser (PEP 508: names, extras, version
specifiers, environment markers) and checks it against the installed
distributions (``importlib.metadata``). Guarantees: one :class:`Problem` per
unparsable line, pip option (``-r``, ``-e``, ``--index-url``: a worker never
installs anything at run time), missing distribution, version outside the
specifier or missing extra dependency, each naming the file and line. A
requirement whose marker does not apply here is skipped. Light: imports no
CrewAI.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from app.errors import Problem

REQUIREMENTS_FILE = "requirements.txt"


def _installed(requirement: Requirement) -> str | None:
    """Why ``requirement`` is not met here, or None if it is."""
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement.name} is not installed"
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        return f"{requirement.name} {version} is installed; the plugin needs {requirement.specifier}"
    for extra in sorted(requirement.extras):
        for needed in metadata.requires(requirement.name) or []:
            dependency = Requirement(needed)
            marker = dependency.marker
            if marker is None or not marker.evaluate({"extra": extra}):
                continue
            problem = _installed(Requirement(str(dependency).split(";")[0]))
            if problem:
                return f"{requirement.name}[{extra}] needs {dependency.name}: {problem}"
    return None


def check_file(path: Path, *, label: str) -> list[Problem]:
    """Problems of one requirements file (``label`` names it in each problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(label, "", f"cannot read: {exc}")]
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            problems.append(
                Problem(label, line, "pip options are not supported: list plain requirements", number)
            )
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(Problem(label, line, f"not a valid requirement: {exc}", number))
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        problem = _installed(requirement)
        if problem:
            problems.append(Problem(label, requirement.name, problem, number))
    return problems


def requirement_problems(folder: Path, entry_file: Path) -> list[Problem]:
    """Problems of the plugin's requirements files (next to the entry point and at its root)."""
    root = folder.resolve()
    candidates = [entry_file.resolve().parent / REQUIREMENTS_FILE, root / REQUIREMENTS_FILE]
    problems: list[Problem] = []
    for path in dict.fromkeys(candidates):
        if path.is_file() and path.resolve().is_relative_to(root):
            problems.extend(check_file(path, label=str(folder / path.relative_to(root))))
    return problems
