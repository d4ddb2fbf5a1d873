"""The lease a worker holds on a claimed run, renewed while its crew runs.

Guarantees: :meth:`Lease.renew` extends ``lease_expires_at`` only for the
fenced attempt (see :mod:`app.db.runs`) and reports :attr:`LeaseState.LOST`
once the run was cancelled, finished or taken over, so the worker stops
waiting. A database error while renewing is logged and reported as
:attr:`LeaseState.UNKNOWN`: the worker keeps going, and if the outage outlasts
the lease another worker may take over; our later writes are then fenced off.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from enum import Enum

from sqlalchemy.exc import SQLAlchemyError

from app.db import runs
from app.db.engine import session_scope
from app.db.models import RunStatus, utcnow

log = logging.getLogger(__name__)


class LeaseState(Enum):
    """Result of one renewal."""

    HELD = "held"
    LOST = "lost"
    UNKNOWN = "unknown"


class Lease:
    """A renewable lease on ``run_id`` for attempt ``attempt``."""

    def __init__(
        self,
        run_id: uuid.UUID,
        *,
        attempt: int,
        lease_seconds: int,
        base: int = 0,
        on_renew: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.lease_seconds = lease_seconds
        #: Attempts before the run's last replay: this attempt is try ``attempt - base`` of its budget.
        self.base = base
        #: Called after each renewal that held: what else lives as long as the lease
        #: (the run's flow-control slot) is renewed with it.
        self.on_renew = on_renew

    @property
    def tries(self) -> int:
        """This attempt's number within the run's current retry budget (1-based)."""
        return self.attempt - self.base

    @property
    def interval(self) -> float:
        """Seconds between renewals: a third of the lease, so two renewals may fail before it lapses."""
        return self.lease_seconds / 3

    def renew(self) -> LeaseState:
        """Extend the lease by ``lease_seconds`` from now, if this attempt still owns the run."""
        try:
            with session_scope() as session:
                held = runs.renew_lease(
                    session, self.run_id, attempt=self.attempt, now=utcnow(), lease_seconds=self.lease_seconds
                )
        except SQLAlchemyError as exc:
            log.warning("could not renew the lease (will retry at the next heartbeat): %s", exc)
            return LeaseState.UNKNOWN
        if held and self.on_renew is not None:
            self.on_renew()
        return LeaseState.HELD if held else LeaseState.LOST

    def current_status(self) -> RunStatus | None:
        """The run's status now (None if the row is gone)."""
        with session_scope() as session:
            state = runs.states(session, [self.run_id]).get(self.run_id)
        return state.status if state else None
