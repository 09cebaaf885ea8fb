"""The broker follows listeners.yaml: apply its queues and bindings, remove
what it no longer says, show the difference, delete leftover queues.

AMQP 0-9-1 cannot list a queue's bindings, and RabbitMQ's management plugin
may be absent, so the service records in its database what it declared for
the queues of its installation (QUEUE_PREFIX) and compares the file with
that record (docs/decisions/0020-routes-follow-the-file.md). ``apply`` runs
when a worker process boots (``ApplyRoutesAtBoot``) and with
``cqrs-warehouse routes apply``, under an advisory lock, so that processes
starting together take turns. What the record cannot see: bindings somebody
added by hand, and what an earlier release declared before the record existed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import peewee
import pika
import pika.exceptions
from dramatiq.common import dq_name, xq_name
from dramatiq.middleware import Middleware

from ..errors import ConfigurationError
from ..storage.models import Model, utcnow
from .topology import Topology, queue_stats

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x6371_7275  # any constant: serialises concurrent applies


class DeclaredQueue(Model):
    """A listener queue the service declared, and the listener it was for."""

    queue = peewee.CharField(max_length=255, primary_key=True)
    listener = peewee.CharField(max_length=100)
    declared_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "messaging_declared_queues"


class DeclaredBinding(Model):
    """A binding of a listener queue to an exchange that the service declared."""

    queue = peewee.CharField(max_length=255)
    exchange = peewee.CharField(max_length=255)
    binding = peewee.CharField(max_length=255)

    class Meta:
        table_name = "messaging_declared_bindings"
        primary_key = peewee.CompositeKey("queue", "exchange", "binding")


Binding = tuple[str, str, str]  # (queue, exchange, binding)


@dataclass(frozen=True)
class Changes:
    """What an ``apply`` did on the broker."""

    bound: list[Binding]  # in the file and not recorded before
    unbound: list[Binding]  # recorded, and no longer in the file
    leftovers: list[str]  # recorded queues that no listener of the file owns


@dataclass(frozen=True)
class QueueState:
    queue: str
    listener: str  # the listener it is (or was) for
    messages: int | None  # ready in the queue and its delay queue; None: no such queue
    consumers: int | None
    in_file: tuple[str, ...]  # bindings listeners.yaml gives it
    declared: tuple[str, ...]  # bindings recorded as declared ("exchange: pattern" if another)


class PruneRefused(Exception):
    """A queue ``prune`` will not delete (the reason is the message)."""


class Routes:
    def __init__(
        self,
        database: Any,
        topology: Topology,
        parameters: Any,
        *,
        prefix: str,
        owners: Mapping[str, str],
        source: str,
    ) -> None:
        """``owners``: each listener queue of the file (``source``) -> its listener."""
        self.database = database
        self.source = source
        self.topology = topology
        self.parameters = parameters
        self.prefix = prefix
        self.owners = dict(owners)

    @property
    def wanted(self) -> set[Binding]:
        exchange = self.topology.exchange
        bindings = self.topology.bindings
        return {(q, exchange, b) for q, patterns in bindings.items() for b in patterns}

    def apply(self) -> Changes:
        """Make the broker follow the file: declare the exchange, every listener
        queue and its bindings; unbind what was declared and is no longer in the
        file, a queue of a listener gone from the file included (it and its
        messages are kept). Records first, so that nothing declared escapes it.
        In an open database connection."""
        wanted = self.wanted
        with self.database.exclusively(_LOCK_KEY):
            with self.database.atomic():
                recorded = self._recorded_bindings()
                leftovers = sorted(set(self._recorded_queues()) - set(self.owners))
                for queue, listener in self.owners.items():
                    DeclaredQueue.insert(queue=queue, listener=listener).on_conflict(
                        conflict_target=[DeclaredQueue.queue],
                        update={DeclaredQueue.listener: listener},
                    ).execute()
                for queue, exchange, binding in sorted(wanted - recorded):
                    DeclaredBinding.insert(
                        queue=queue, exchange=exchange, binding=binding
                    ).on_conflict_ignore().execute()
            stale = sorted(recorded - wanted)
            with self._channel() as channel:
                self.topology.declare(channel)
                for queue, exchange, binding in stale:
                    channel = _unbind(channel, queue, exchange, binding)
                    DeclaredBinding.delete().where(
                        (DeclaredBinding.queue == queue)
                        & (DeclaredBinding.exchange == exchange)
                        & (DeclaredBinding.binding == binding)
                    ).execute()
        return Changes(bound=sorted(wanted - recorded), unbound=stale, leftovers=leftovers)

    def status(self) -> tuple[list[QueueState], list[QueueState]]:
        """The listener queues of the file, and the leftover queues of this installation."""
        recorded_queues = self._recorded_queues()
        declared: dict[str, list[str]] = {}
        for queue, exchange, binding in sorted(self._recorded_bindings()):
            shown = binding if exchange == self.topology.exchange else f"{exchange}: {binding}"
            declared.setdefault(queue, []).append(shown)
        leftovers = sorted(set(recorded_queues) - set(self.owners))
        stats = queue_stats(self.parameters, [*self.owners, *leftovers])

        def state(queue: str, listener: str) -> QueueState:
            messages, consumers = stats[queue] or (None, None)
            return QueueState(
                queue,
                listener,
                messages,
                consumers,
                tuple(self.topology.bindings.get(queue, ())),
                tuple(declared.get(queue, ())),
            )

        return (
            [state(queue, listener) for queue, listener in self.owners.items()],
            [state(queue, recorded_queues[queue]) for queue in leftovers],
        )

    def prune(self, queue: str, *, force: bool = False) -> int:
        """Delete leftover ``queue`` (with its delay and dead-letter queues) and
        its record; returns the messages deleted with it. Raises PruneRefused
        for a queue of the file, one this installation did not declare, or one
        that holds messages unless ``force``. In an open database connection."""
        if queue in self.owners:
            raise PruneRefused(
                f"{queue} is the queue of listener {self.owners[queue]}, which "
                f"{self.source} still declares; remove the listener first"
            )
        if queue not in self._recorded_queues():
            raise PruneRefused(
                f"{queue} is not a leftover queue of this installation "
                f"(QUEUE_PREFIX={self.prefix!r}); `cqrs-warehouse routes status` lists them"
            )
        names = [queue, dq_name(queue), xq_name(queue)]
        counts = queue_stats(self.parameters, names, delayed=False)
        waiting = sum(stat[0] for stat in counts.values() if stat is not None)
        if waiting and not force:
            raise PruneRefused(
                f"{queue} holds {waiting} messages (with its delay and dead-letter queues); "
                "nothing was deleted. Add --force to delete them with it"
            )
        deleted = 0
        with self._channel() as channel:
            for name in names:
                if counts[name] is None:
                    continue
                try:
                    done = channel.queue_delete(queue=name, if_empty=not force)
                    deleted += int(done.method.message_count)
                except pika.exceptions.ChannelClosedByBroker as error:
                    raise PruneRefused(
                        f"RabbitMQ refused to delete {name}: {error.reply_text} "
                        "(a message arrived meanwhile?)"
                    ) from None
        with self.database.atomic():
            DeclaredBinding.delete().where(DeclaredBinding.queue == queue).execute()
            DeclaredQueue.delete().where(DeclaredQueue.queue == queue).execute()
        return deleted

    def _recorded_queues(self) -> dict[str, str]:
        # (Filtered here: in SQL, '_' of a prefix would be LIKE's wildcard.)
        rows: Any = DeclaredQueue.select(DeclaredQueue.queue, DeclaredQueue.listener).tuples()
        return {queue: listener for queue, listener in rows if queue.startswith(self.prefix)}

    def _recorded_bindings(self) -> set[Binding]:
        rows: Any = DeclaredBinding.select(
            DeclaredBinding.queue, DeclaredBinding.exchange, DeclaredBinding.binding
        ).tuples()
        return {(q, e, b) for q, e, b in rows if q.startswith(self.prefix)}

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        connection = pika.BlockingConnection(self.parameters)
        try:
            yield connection.channel()
        finally:
            if connection.is_open:
                connection.close()


def _unbind(channel: Any, queue: str, exchange: str, binding: str) -> Any:
    """Unbind, on ``channel`` or, if RabbitMQ closed it, a new one; returns
    the channel to go on with. A queue or exchange that no longer exists has
    no binding left: that is done too."""
    try:
        channel.queue_unbind(queue=queue, exchange=exchange, routing_key=binding)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 404:
            raise
        logger.info("%s or %s no longer exists: nothing to unbind", queue, exchange)
        return channel.connection.channel()
    logger.info("unbound %s from %s (%r): no longer in listeners.yaml", queue, exchange, binding)
    return channel


class ApplyRoutesAtBoot(Middleware):
    """Applies the file's routes when a worker process boots, before it consumes,
    and declares every other queue of the process (the drain's): a queue that
    exists with another type than QUEUE_TYPE stops the workers with one line
    here, rather than its consumer failing again and again."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        try:
            with self.routes.database.connection_context():
                changes = self.routes.apply()
            ours = self.routes.topology.broker  # (the same broker, typed as ours)
            for queue in sorted(ours.get_declared_queues()):
                ours.declare_queue(queue, ensure=True)
        except ConfigurationError as error:
            print(f"cqrs-warehouse worker: {error}", file=sys.__stderr__, flush=True)
            raise SystemExit(2) from None
        if changes.unbound or changes.leftovers:
            logger.warning(
                "routes applied: %d bindings unbound; leftover queues no listener owns: %s "
                "(`cqrs-warehouse routes status`)",
                len(changes.unbound),
                ", ".join(changes.leftovers) or "none",
            )
