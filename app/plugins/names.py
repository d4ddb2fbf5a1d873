"""The plugin name rule, on its own so light modules (Redis key names) can use it cheaply."""

from __future__ import annotations

import re

#: A plugin name is a safe token: it becomes part of Redis keys and module names. Underscores
#: are allowed because ``crewai create crew "news brief"`` names its project folder ``news_brief``.
PLUGIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: The rule of :data:`PLUGIN_NAME_RE` in words, for error messages and help.
PLUGIN_NAME_RULE = "lower-case letters, digits, dashes and underscores (at most 63)"

#: A Celery queue name a plugin may route its runs to: a safe token (it becomes a Redis key).
QUEUE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
#: The queue every plugin's runs go to unless its manifest names another.
DEFAULT_RUNS_QUEUE = "runs"
#: The scheduler's own queue: never a plugin's, so a backlog of runs cannot delay a tick.
SCHEDULER_QUEUE = "scheduler"
