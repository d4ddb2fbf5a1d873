"""Plugins: the manifest model, discovery into a registry, settings validation, sync to the DB.

Nothing here imports CrewAI: the registry is used by light processes (beat,
consumer, API, CLI). The crew itself is loaded only by the worker.
"""

from app.plugins.manifest import PluginManifest
from app.plugins.registry import Plugin, Registry, discover, load_plugin
from app.plugins.settings import validate_settings

__all__ = ["Plugin", "PluginManifest", "Registry", "discover", "load_plugin", "validate_settings"]
