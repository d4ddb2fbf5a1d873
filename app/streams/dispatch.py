"""Handing stream entries to Celery: ``execute_run`` tasks through one pooled producer.

Guarantees: :meth:`Dispatcher.dispatch` sends one ``execute_run`` task per
item, with the run id and the entry's stream, group and id so the worker can
XACK it, and either returns (every task reached the broker) or raises (some
may have: delivery is uncertain, and the caller keeps the entries pending and
tries again; the worker's claim makes a duplicate harmless). It never acks a
stream entry.

Why batched: kombu 5.7's ``Producer.batch()`` buffers the Redis commands of
many publishes (the LPUSH of each task and the PUBLISH of its ``task-sent``
event) in one pipeline, so a loop iteration costs one broker round trip
instead of two per task. Transports without batch support publish each task
at once, unchanged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.common import maybe_declare

from app import keys
from app.celery_app import RUNS_QUEUE, celery_app
from app.task_names import EXECUTE_RUN, task_id_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatch:
    """One task to send: the run and the stream entry that named it."""

    run_id: uuid.UUID
    plugin: str
    entry_id: str
    #: The group's delivery counter for the entry once this dispatch is made (flow control
    #: holds an entry back without counting a delivery; see app.streams.gate).
    delivery_count: int = 1
    #: The attempt the entry asks for (its envelope's): the flow-control slot it takes is that attempt's.
    attempt: int = 1

    def kwargs(self) -> dict[str, str | int]:
        """The keyword arguments ``execute_run`` receives."""
        return {
            "plugin": self.plugin,
            "attempt": self.attempt,
            "stream": keys.stream(self.plugin),
            "group": keys.GROUP,
            "entry_id": self.entry_id,
        }


class Dispatcher:
    """Sends ``execute_run`` tasks over one broker connection of its own, held for the process's life.

    Each plugin's runs go to its queue (manifest key ``queue``, set through :meth:`route`);
    plugins not routed go to ``runs``.
    """

    def __init__(self, *, batch_size: int = 1000) -> None:
        self._producer: Any = None
        self._batch_size = batch_size
        self._routes: dict[str, str] = {}
        self._declared: set[str] = set()

    def route(self, queues: dict[str, str]) -> None:
        """Plugin name -> Celery queue, for the dispatches that follow."""
        self._routes = dict(queues)

    def queue_for(self, plugin: str) -> str:
        """The Celery queue ``plugin``'s runs are sent to."""
        return self._routes.get(plugin, RUNS_QUEUE)

    def _declare(self, producer: Any, queue: str) -> None:
        if queue in self._declared:
            return
        # Declared once per connection, so no publish has to (see ``declare=()`` below).
        # (Celery's queue table creates an unknown queue on first lookup, like any routed task.)
        maybe_declare(celery_app.amqp.queues[queue], producer.channel)  # type: ignore[no-untyped-call]
        self._declared.add(queue)

    def _acquire(self) -> Any:
        if self._producer is None:
            # A connection of our own, not one from the app's producer pool: the consumer
            # holds it for its life, and a pool slot held forever starves other users.
            connection = celery_app.connection_for_write()
            try:
                producer = celery_app.amqp.Producer(connection, auto_declare=False)
                self._declared = set()
                self._declare(producer, RUNS_QUEUE)
            except Exception:
                connection.release()
                raise
            self._producer = producer
        return self._producer

    def dispatch(self, items: Sequence[Dispatch]) -> None:
        """Send one task per item; raises if the broker could not take them all."""
        if not items:
            return
        producer = self._acquire()
        try:
            # Our caller owns retries (entries stay pending): Celery's own publish retry
            # would only stall the loop, and it cannot apply to a batch anyway.
            for queue in {self.queue_for(item.plugin) for item in items}:
                self._declare(producer, queue)
            with producer.batch(max_size=self._batch_size):
                for item in items:
                    run_id, kwargs = str(item.run_id), item.kwargs()
                    # By name: the consumer never imports the tasks (nor, through them, the
                    # scheduler and the execution package).
                    celery_app.send_task(
                        EXECUTE_RUN,
                        args=(run_id,),
                        kwargs=kwargs,
                        task_id=task_id_for(run_id, item.entry_id),
                        producer=producer,
                        queue=self.queue_for(item.plugin),
                        retry=False,
                        # As the task declares it: no result backend is consulted for these.
                        ignore_result=True,
                        # Celery would re-declare the queue and saferepr() the arguments for
                        # every task: a third of its cost. Both are known and plain here.
                        declare=(),
                        argsrepr=repr((run_id,)),
                        kwargsrepr=repr(kwargs),
                    )
        except Exception:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop the connection after a broker error; the next dispatch opens a fresh one."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            # Drop the sockets of a connection that failed mid-command.
            producer.connection.collect()
        except Exception:  # best effort: the connection may already be gone
            log.debug("discarding a broken broker connection failed", exc_info=True)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.connection.release()
