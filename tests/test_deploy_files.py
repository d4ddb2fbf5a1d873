"""Procfile, Dockerfile and compose file agree (no Docker engine here: check what can be checked)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Procfile process type -> compose service that runs it.
SERVICE_FOR = {
    "release": "migrate",
    "web": "flower",
    "worker": "worker",
    "beat": "beat",
    "consumer": "consumer",
}


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def program(command: str | list[str]) -> list[str]:
    """The program and its fixed arguments (env prefixes, exec, shell wrappers, variable values dropped)."""
    if isinstance(command, list):
        command = command[2] if command[:2] == ["sh", "-c"] else shlex.join(command)
    words = [w for w in shlex.split(command) if w != "exec" and not re.match(r"^[A-Z_]+=", w)]
    return [w.split("=", 1)[0] for w in words if "$" not in w.split("=", 1)[-1] and not w.startswith("${")]


def test_procfile_has_every_process_type() -> None:
    assert set(procfile()) == set(SERVICE_FOR)
    for name, command in procfile().items():
        assert command.startswith(("exec ", "REMAP_SIGTERM=SIGQUIT exec ")), (
            f"{name} must exec so signals reach it"
        )


def test_compose_names_every_procfile_process_with_the_same_command() -> None:
    services = compose()["services"]
    for process, service in SERVICE_FOR.items():
        assert service in services, f"compose has no service for Procfile process {process!r}"
        ours = program(procfile()[process])
        theirs = program(services[service]["command"])
        assert ours[:4] == theirs[:4], (process, ours, theirs)


def test_compose_health_checks_and_dependencies() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["consumer"]["healthcheck"]["test"][-2:] == ["consumer", "--check"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    for name in ("worker", "beat", "consumer", "flower"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_dockerfile_is_slim_non_root_and_caches_dependencies() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    # pyproject is copied (and dependencies installed) before the code.
    assert text.index("COPY pyproject.toml") < text.index("COPY app ")
    for path in ("app", "migrations", "plugins", "Procfile"):
        assert re.search(rf"^COPY {path}\b", text, re.M)


def test_workers_consume_every_queue_unless_split() -> None:
    # A plain worker consumes every queue (the scheduler's included); a split is an explicit,
    # documented choice, shown in the Procfile as a commented example.
    assert "--queues" not in procfile()["worker"]
    assert "--queues" not in compose()["services"]["worker"]["command"][-1]
    text = (ROOT / "Procfile").read_text()
    examples = {
        line.partition(":")[0].removeprefix("# "): line
        for line in text.splitlines()
        if line.startswith("# worker-")
    }
    assert "--exclude-queues=" in text
    # The split shows a worker on the scheduler's queue next to the runs worker, and a plugin's own.
    assert "--queues=scheduler " in examples["worker-scheduler"]
    assert "--queues=slow " in examples["worker-slow"]
    for line in examples.values():
        assert (
            line.removeprefix(line.partition(":")[0] + ":")
            .strip()
            .startswith("REMAP_SIGTERM=SIGQUIT exec celery")
        )


def test_every_llm_and_flow_setting_is_in_the_readme_table() -> None:
    from app.config import Settings

    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    documented = " ".join(line.split(" | ")[0] for line in table)
    names = [field.alias for field in Settings.model_fields.values() if field.alias]
    ours = [name for name in names if name.startswith("FIRST_SIP_")]  # the LLM and flow-control settings
    assert ours and [name for name in ours if f"`{name}`" not in documented] == []
