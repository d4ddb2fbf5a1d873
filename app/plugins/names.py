"""The plugin name rule, on its own so light modules (Redis key names) can use it cheaply."""

from __future__ import annotations

import re

#: A plugin name is a safe token: it becomes part of Redis keys and module names.
PLUGIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
