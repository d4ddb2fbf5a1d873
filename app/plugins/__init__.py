"""Plugins: the manifest model, discovery into a registry, settings validation, sync to the DB.

Import the submodule you need (``app.plugins.registry``, ``app.plugins.settings``...):
this package imports nothing itself, so the light processes that only need a
plugin name rule (``app.plugins.names``) do not pay for YAML and JSON Schema.
Nothing here imports CrewAI; the crew itself is loaded only by the worker.
"""
