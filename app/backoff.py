"""Exponential backoff with jitter, capped: the one delay rule for everything that retries.

Two callers: a run's retry after a transient failure (the delay becomes the
run's ``next_attempt_at`` in PostgreSQL; nothing uses Celery countdown/ETA)
and the consumer process waiting out a Redis or PostgreSQL outage
(:class:`Backoff`). Jitter spreads the retries of many runs or consumers that
failed together (a provider outage, a restarted Redis) instead of bunching them.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float = 1.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based).

    The ceiling is ``min(cap, base * 2 ** (attempt - 1))``; ``jitter`` is the share
    of it that is random: uniform in ``[ceiling * (1 - jitter), ceiling]``. The
    default 1.0 is "full jitter" (uniform in ``[0, ceiling]``).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter is a share, between 0 and 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return ceiling * ((1.0 - jitter) + jitter * rand())


class Backoff:
    """Consecutive failures of one loop: 0.5 s, 1 s, 2 s ... up to ``cap``, each 50-100 % of that."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        # Half jitter: never retry at once, yet many consumers restarting after one outage
        # do not retry in lockstep.
        delay = backoff_seconds(self.failures + 1, base=self.base, cap=self.cap, jitter=0.5)
        self.failures = min(self.failures + 1, 32)
        return delay

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0
