"""Running plugin crews: the worker side of a run (claim, lease, crew, outcome, XACK).

Importing this package is cheap: no module here imports CrewAI at import time.
CrewAI is imported by :func:`app.execution.runtime.prepare`, called only when a
worker is about to run a crew.
"""
