"""Counters of what the consumer did, per iteration and per process (for logs and tests)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class LoopStats:
    """What one iteration (or, summed, a process) did."""

    read: int = 0
    dispatched: int = 0
    reclaimed: int = 0
    acked: int = 0
    kept: int = 0
    dead_lettered: int = 0
    republished: int = 0
    #: Entries flow control held back (each counted every time it is offered and held).
    held: int = 0

    def add(self, other: LoopStats) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        """``read=.. dispatched=..`` for log lines."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
