"""Retry backoff for transient failures: exponential with full jitter, capped.

The delay becomes the run's ``next_attempt_at`` in PostgreSQL; nothing here
(or anywhere) uses Celery countdown/ETA. Full jitter spreads the retries of
many runs that failed together (a provider outage) instead of bunching them.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based).

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]`` ("full jitter").
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return ceiling * rand()
