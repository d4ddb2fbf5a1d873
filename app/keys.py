"""Every Redis key name this project uses, in one place, under the configured prefix.

Hash tags: a plugin's stream and its dead-letter stream share ``{<plugin>}``, and
no command ever spans two plugins' streams. That would let the keys spread over
a Redis Cluster, but the client is not cluster-aware and nothing is tested on a
cluster: one Redis is what is supported (docs/operations.md says why it is enough).
"""

from __future__ import annotations

import hashlib
import re

from app.config import get_settings
from app.plugins.names import PLUGIN_NAME_RE

#: The consumer group every stream consumer joins.
GROUP = "workers"
#: Stream entry field names (the envelope).
FIELD_VERSION = "v"
FIELD_PAYLOAD = "payload"


def _prefix() -> str:
    return get_settings().redis_key_prefix


def _checked(plugin: str) -> str:
    # Plugin names come from manifests (already checked) but also from stream
    # names and CLI arguments: never let an unchecked one become a key.
    if not PLUGIN_NAME_RE.fullmatch(plugin):
        raise ValueError(f"not a valid plugin name: {plugin!r}")
    return plugin


def plugin_name_ok(plugin: str) -> bool:
    """True if ``plugin`` may become part of a key (task arguments are not trusted)."""
    return bool(PLUGIN_NAME_RE.fullmatch(plugin))


def stream(plugin: str) -> str:
    """The execution stream of ``plugin``: ``<prefix>:plugin:execution:{<plugin>}``."""
    return f"{_prefix()}:plugin:execution:{{{_checked(plugin)}}}"


def dead_letters(plugin: str) -> str:
    """The dead-letter stream of ``plugin`` (same hash slot as its stream)."""
    return stream(plugin) + ":dead"


def plugin_from_stream(key: str) -> str | None:
    """The plugin a stream or dead-letter key belongs to, or None if it is not one of ours."""
    head = f"{_prefix()}:plugin:execution:{{"
    if not key.startswith(head):
        return None
    name, _, rest = key[len(head) :].partition("}")
    if rest not in ("", ":dead") or not PLUGIN_NAME_RE.fullmatch(name):
        return None
    return name


def doorbell() -> str:
    """A one-element list the producer pushes after publishing: idle consumers BLPOP it to wake at once."""
    return f"{_prefix()}:streams:doorbell"


def cancellations() -> str:
    """The pub/sub channel a cancelled run's id is published on, so the worker running it stops now."""
    return f"{_prefix()}:runs:cancelled"


# ---- flow control (app/flow) ------------------------------------------------------------------

_MODEL_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:/@-]{1,200}$")


def _model_tag(model: str) -> str:
    # A model name is an operator setting; anything unusual becomes a digest, never a raw key part.
    if _MODEL_TOKEN_RE.fullmatch(model):
        return model
    return "sha1-" + hashlib.sha1(model.encode(), usedforsecurity=False).hexdigest()


def inflight(plugin: str) -> str:
    """Sorted set of ``plugin``'s runs in flight: member run id, score lease expiry (ms, Redis clock)."""
    return f"{_prefix()}:flow:inflight:{{{_checked(plugin)}}}"


def budget(model: str) -> str:
    """Sorted set of ``model``'s LLM requests in the budget window (score: when, ms, Redis clock)."""
    return f"{_prefix()}:flow:budget:{{{_model_tag(model)}}}"


def pause(model: str) -> str:
    """Set with a TTL while a provider's 429 pauses ``model`` (same hash slot as its budget)."""
    return f"{_prefix()}:flow:pause:{{{_model_tag(model)}}}"


def flow_models() -> str:
    """Hash: model name -> its budget as the workers and consumers run it (JSON), for ``status``."""
    return f"{_prefix()}:flow:models"


def consumer_heartbeat(host: str) -> str:
    """Key a live consumer on ``host`` refreshes with a TTL (``first-sip consumer --check``)."""
    return f"{_prefix()}:consumer:alive:{host}"


def stream_errors() -> str:
    """Hash of plugin -> JSON (error, since, count) for streams the consumer cannot use (``status``)."""
    return f"{_prefix()}:consumer:stream-errors"


def celery_queue(name: str) -> str:
    """The Redis list holding Celery queue ``name``'s waiting messages (kombu's Redis transport)."""
    return f"{celery_prefix()}{name}"


def celery_prefix() -> str:
    """Prefix of Celery's own broker keys (kombu's ``global_keyprefix``)."""
    return f"{_prefix()}:celery:"
