"""The drain and the listener actors on the in-process transport (Dramatiq's
StubBroker), on SQLite and PostgreSQL: the outbox is emptied into exactly the
listeners whose bindings match, and nothing leaves the outbox unless it was
published."""

from __future__ import annotations

import base64
import json
from collections import defaultdict

import dramatiq
import psycopg2
import pytest
from dramatiq.middleware import CurrentMessage

from cqrs_warehouse.messaging.drain import Drain
from cqrs_warehouse.messaging.errors import PublishError
from cqrs_warehouse.messaging.inprocess import Delivery, InProcessTransport
from cqrs_warehouse.messaging.listening.actors import (
    DatabaseConnections,
    declare_listener_actor,
    send_envelope,
)
from cqrs_warehouse.messaging.routing import Exchange, RoutingConfig
from cqrs_warehouse.messaging.signing import SIGNATURE, MessageKeys
from cqrs_warehouse.messaging.storage.models import OutboxRecord, qualified_name
from cqrs_warehouse.messaging.storage.outbox import notified_id
from cqrs_warehouse.messaging.testing import eventually
from tests.db.listening import listener
from tests.slices.recorders.listeners import watch, watched_messages
from tests.support.services import unique_name


class Rig:
    """Listener actors for ``specs`` on an in-process transport of their own,
    and a drain, wired as the runtime wires its own (``runtime._Actors``)."""

    def __init__(self, runtime, specs, *, batch_size: int = 500) -> None:
        self.runtime = runtime
        routing = RoutingConfig(
            source="test", exchange=Exchange(name="messaging"), listeners=tuple(specs)
        )
        self.transport = InProcessTransport(routing, runtime.message_keys)
        self.broker = broker = self.transport.broker
        broker.add_middleware(DatabaseConnections(runtime.database))
        broker.add_middleware(CurrentMessage())
        for middleware in self.transport.middleware:
            broker.add_middleware(middleware)
        broker.emit_after("process_boot")
        prefix = unique_name("q")
        self.actors = {
            spec.name: declare_listener_actor(
                broker, spec, runtime.engine, queue_name=f"{prefix}_{spec.name}"
            )
            for spec in specs
        }
        self.publisher = self.transport.publisher
        self.drain = self.drain_with(self.publisher, batch_size=batch_size)

    def drain_with(self, publisher, *, batch_size: int = 500) -> Drain:
        runtime = self.runtime
        return Drain(
            runtime.database,
            runtime.storage.outbox,
            publisher,
            runtime.metrics,
            batch_size=batch_size,
        )

    def process(self) -> None:
        """Run one worker until every listener queue (and its delay queue) is done."""
        worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            for actor in self.actors.values():
                self.broker.join(actor.queue_name)
            worker.join()
        finally:
            worker.stop()

    def close(self) -> None:
        self.broker.flush_all()
        self.broker.close()


@pytest.fixture
def rigs(runtime):
    built: list[Rig] = []

    def build(specs, **options):
        rig = Rig(runtime, specs, **options)
        built.append(rig)
        return rig

    yield build
    for rig in built:
        rig.close()


@pytest.fixture
def pending(runtime):
    return runtime.outbox.pending


def recorder(name, bindings, received, **options):
    """A listener that appends every message it is handed to ``received[name]``."""
    return listener(
        name, lambda message: received[name].append(message), bindings=bindings, **options
    )


def two_products(commands, sku):
    """Commands on two SKUs; their messages, in commit order."""
    other = f"{sku}-b"
    return [
        commands.increase_product_quantity(sku, 10),
        commands.ship_product_quantity(sku, 4),
        commands.increase_product_quantity(other, 7),
        commands.notify_low_product_quantity(other, 7),
        commands.ship_product_quantity(sku, 6),
    ]


# --- routing ----------------------------------------------------------------


def test_drain_delivers_each_message_to_exactly_the_listeners_whose_bindings_match(
    rigs, commands, sku
):
    received = defaultdict(list)
    rig = rigs(
        [
            recorder("shipped_only", ["Warehouse.Events.ProductQuantityShipped.*"], received),
            recorder("everything", ["#"], received),
            recorder("other_domain", ["Other.#"], received),
        ]
    )
    sent = two_products(commands, sku)
    assert rig.drain.run() == len(sent)
    rig.process()
    shipments = [m for m in sent if m.type == "Warehouse.Events.ProductQuantityShipped"]
    assert received["shipped_only"] == shipments
    assert received["everything"] == sent
    assert received["other_domain"] == []


def test_listener_with_several_bindings_gets_a_matching_message_once(rigs, commands, sku):
    received = defaultdict(list)
    rig = rigs([recorder("overlapping", ["#", "Warehouse.#", "*.*.*.v1"], received)])
    message = commands.increase_product_quantity(sku, 3)
    rig.drain.run()
    rig.process()
    assert received["overlapping"] == [message]


def test_drain_empties_the_outbox_and_the_deliveries(rigs, commands, pending, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received), recorder("none", ["Other.#"], received)])
    two_products(commands, sku)
    rig.drain.run()
    assert pending() == []
    rig.process()
    assert Delivery.select().count() == 0


def test_drain_of_an_empty_outbox_publishes_nothing(rigs):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    assert rig.drain.run() == 0
    rig.process()
    assert received == {}


def test_watch_records_every_delivered_message_with_its_stream_and_position(rigs, commands, sku):
    rig = rigs([listener("watcher", watch)])
    sent = two_products(commands, sku)
    rig.drain.run()
    rig.process()
    assert watched_messages() == sent
    assert [(m.stream, m.position) for m in watched_messages()][:2] == [(sku, 1), (sku, 2)]


def test_messages_committed_after_a_drain_are_delivered_by_the_next(rigs, pending, commands, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    first = commands.increase_product_quantity(sku, 5)
    rig.drain.run()
    second = commands.ship_product_quantity(sku, 5)
    rig.drain.run()
    rig.process()
    assert received["everything"] == [first, second]
    assert pending() == []


# --- batches and failures ---------------------------------------------------


class CountingPublisher:
    """Wraps a publisher: records each batch's message ids; can fail from a given call."""

    def __init__(self, inner, *, fail_from_call: int | None = None, fail_after_publish=False):
        self.inner = inner
        self.batches: list[list[str]] = []
        self.fail_from_call = fail_from_call
        self.fail_after_publish = fail_after_publish

    def publish(self, records, *, meanwhile=None):
        call = len(self.batches) + 1
        self.batches.append([r.message_id for r in records])
        if self.fail_from_call is not None and call >= self.fail_from_call:
            if self.fail_after_publish:
                # The broker took the messages, then the drain died before deleting.
                hand_over = self.inner.publish(records, meanwhile=meanwhile)
                hand_over()
            raise PublishError("broker did not confirm")
        return self.inner.publish(records, meanwhile=meanwhile)


def test_drain_publishes_in_batches_in_outbox_order(rigs, commands, pending, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    counting = CountingPublisher(rig.publisher)
    sent = two_products(commands, sku)
    assert rig.drain_with(counting, batch_size=2).run() == 5
    ids = [m.id for m in sent]
    assert counting.batches == [ids[0:2], ids[2:4], ids[4:5]]
    assert pending() == []
    rig.process()
    assert received["everything"] == sent


def test_publisher_that_raises_leaves_every_row_in_the_outbox(rigs, commands, pending, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    sent = two_products(commands, sku)
    failing = CountingPublisher(rig.publisher, fail_from_call=1)
    with pytest.raises(PublishError):
        rig.drain_with(failing).run()
    assert pending() == sent
    assert Delivery.select().count() == 0
    rig.process()
    assert received == {}


def test_publisher_that_raises_on_a_later_batch_keeps_that_batch_and_the_rest(
    rigs, commands, pending, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    sent = two_products(commands, sku)
    failing = CountingPublisher(rig.publisher, fail_from_call=2)
    with pytest.raises(PublishError):
        rig.drain_with(failing, batch_size=2).run()
    assert pending() == sent[2:]
    rig.process()
    assert received["everything"] == sent[:2]


def test_failed_drain_is_completed_by_the_next_run(rigs, commands, pending, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    sent = two_products(commands, sku)
    with pytest.raises(PublishError):
        rig.drain_with(CountingPublisher(rig.publisher, fail_from_call=1)).run()
    assert rig.drain.run() == len(sent)
    rig.process()
    assert received["everything"] == sent
    assert pending() == []


# --- where a take starts (the ids the drain was notified of) -----------------


def waiting_ids() -> list[str]:
    return [str(r.id) for r in OutboxRecord.select(OutboxRecord.id).order_by(OutboxRecord.id)]


def test_the_first_run_takes_from_the_start_whatever_it_was_notified_of(
    rigs, commands, pending, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    sent = two_products(commands, sku)
    assert rig.drain.run(waiting_ids()[-1:]) == len(sent)
    assert pending() == []


def test_a_run_takes_from_the_smallest_notified_id_and_one_without_from_the_start(
    rigs, commands, pending, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    assert rig.drain.run() == 0  # the first run, from the start
    sent = two_products(commands, sku)
    ids = waiting_ids()
    assert rig.drain.run([ids[3], ids[2], ids[4]]) == 3
    # Rows it was not notified of are left for a run from the start (the sweep).
    assert pending() == sent[:2]
    assert rig.drain.run() == 2
    assert pending() == []


def test_a_run_takes_the_rows_from_the_smallest_notified_id_to_the_largest(
    rigs, commands, pending, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    rig.drain.run()  # the first run, from the start
    sent = two_products(commands, sku)
    ids = waiting_ids()
    # The rows after the largest have their notifications to come.
    assert rig.drain.run([ids[2], ids[1]]) == 2
    assert pending() == [sent[0], *sent[3:]]


def test_a_notification_that_is_not_an_id_makes_the_run_take_from_the_start(
    rigs, commands, pending, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    rig.drain.run()
    sent = two_products(commands, sku)
    # A process of an earlier version notified with an empty payload.
    assert rig.drain.run([waiting_ids()[-1], ""]) == len(sent)
    assert pending() == []


def test_after_a_failed_batch_the_next_run_takes_from_the_start(rigs, commands, pending, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    publisher = CountingPublisher(rig.publisher, fail_from_call=2)
    drain = rig.drain_with(publisher)
    first = commands.increase_product_quantity(sku, 5)
    assert drain.run(waiting_ids()) == 1
    second = commands.ship_product_quantity(sku, 1)
    with pytest.raises(PublishError):
        drain.run(waiting_ids())
    publisher.fail_from_call = None
    third = commands.ship_product_quantity(sku, 1)
    # Notified of the third row only: the second came back below it.
    assert drain.run(waiting_ids()[-1:]) == 2
    assert pending() == []
    rig.process()
    assert received["everything"] == [first, second, third]


# --- the leader publishes the rows its notifications carry (PostgreSQL) -------


@pytest.fixture
def notified(runtime):
    """``notified(count)``: the payloads of the outbox's notifications, once
    ``count`` have arrived (they arrive after the commit)."""
    connection = psycopg2.connect(runtime.settings.database_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'LISTEN "{runtime.settings.notify_channel}"')

    def payloads(count: int) -> list[str]:
        def arrived() -> None:
            connection.poll()
            assert len(connection.notifies) >= count

        eventually(arrived, timeout=10)
        return [notice.payload for notice in connection.notifies]

    yield payloads
    connection.close()


class SeeingPublisher:
    """Wraps a publisher: records which rows were still in the outbox, in the
    drain's own transaction, as each batch was published."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: list[int] = []  # per batch: how many of its rows were still there

    def publish(self, rows, *, meanwhile=None):
        ids = [row.id for row in rows]
        self.seen.append(OutboxRecord.select().where(OutboxRecord.id.in_(ids)).count())
        return self.inner.publish(rows, meanwhile=meanwhile)


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_the_leader_publishes_the_notified_rows_and_only_then_takes_them(
    rigs, commands, pending, notified, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    seeing = SeeingPublisher(rig.publisher)
    drain = rig.drain_with(seeing)
    sent = two_products(commands, sku)
    payloads = notified(len(sent))
    # The first run takes from the start, whatever it is handed: all five.
    assert drain.run(payloads[:2], as_notified=True) == len(sent)
    assert seeing.seen == [0]  # taken (deleted) before they were published
    # Three were taken before their notifications came: handed those, it takes
    # (and finds nothing), as it must not publish them again.
    assert drain.run(payloads[2:], as_notified=True) == 0
    more = two_products(commands, f"{sku}-2")
    payloads = notified(len(sent) + len(more))[len(sent) :]
    assert drain.run(payloads, as_notified=True) == len(more)
    assert seeing.seen == [0, len(more)]  # published while still in the outbox
    assert pending() == []  # and deleted with the commit
    rig.process()
    assert received["everything"] == sent + more


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_drain_that_does_not_lead_takes_from_the_smallest_notified_row(
    rigs, commands, pending, notified, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    seeing = SeeingPublisher(rig.publisher)
    drain = rig.drain_with(seeing)
    drain.run()
    sent = two_products(commands, sku)
    assert drain.run(notified(len(sent))[2:]) == 3
    assert seeing.seen == [0]  # taken before it was published
    assert pending() == sent[:2]


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_notifications_of_which_one_carries_only_an_id_make_the_leader_take(
    rigs, runtime, commands, pending, notified, sku
):
    rig = rigs([recorder("everything", ["#"], defaultdict(list))])
    seeing = SeeingPublisher(rig.publisher)
    drain = rig.drain_with(seeing)
    drain.run()
    sent = two_products(commands, sku)
    payloads = notified(len(sent))
    payloads[3] = str(notified_id(payloads[3]))  # as for a row too long to carry
    assert drain.run(payloads[1:], as_notified=True) == 4
    assert seeing.seen == [0]  # taken before it was published
    assert pending() == sent[:1]


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_notified_row_another_drain_holds_is_published_but_left_to_that_drain(
    rigs, runtime, commands, pending, notified, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    rig.drain.run()
    sent = two_products(commands, sku)
    held_id = notified_id(notified(len(sent))[0])
    other = psycopg2.connect(runtime.settings.database_url)  # another drain, mid-batch
    try:
        with other.cursor() as cursor:
            table = qualified_name(OutboxRecord)
            cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (held_id,))
            # Not held up by the lock (SKIP LOCKED): the others are deleted.
            assert rig.drain.run(notified(len(sent)), as_notified=True) == len(sent)
            assert pending() == sent[:1]
        other.rollback()  # that drain failed: the row is still there to publish
    finally:
        other.close()
    rig.process()
    assert received["everything"] == sent  # (the listener recognises a second copy)


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_after_a_failed_batch_of_notified_rows_the_next_run_takes_from_the_start(
    rigs, commands, pending, notified, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    publisher = CountingPublisher(rig.publisher, fail_from_call=1)
    drain = rig.drain_with(publisher)
    drain.run()  # (finds nothing to publish)
    sent = two_products(commands, sku)
    with pytest.raises(PublishError):
        drain.run(notified(len(sent)), as_notified=True)
    assert pending() == sent  # nothing was deleted
    publisher.fail_from_call = None
    last = commands.increase_product_quantity(sku, 1)
    assert drain.run(notified(len(sent) + 1)[-1:], as_notified=True) == len(sent) + 1
    assert pending() == []
    rig.process()
    assert received["everything"] == [*sent, last]


def test_republished_batch_after_a_crash_before_delete_is_applied_once(
    rigs, commands, pending, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received), recorder("shipped", ["#.v1"], received)])
    sent = two_products(commands, sku)
    crashing = CountingPublisher(rig.publisher, fail_from_call=1, fail_after_publish=True)
    with pytest.raises(PublishError):
        rig.drain_with(crashing).run()
    assert pending() == sent  # published, but not deleted
    rig.drain.run()
    rig.process()
    assert received["everything"] == sent
    assert received["shipped"] == sent
    assert pending() == []


# --- the listener actor -----------------------------------------------------


def test_delivery_that_fails_its_schema_is_dead_lettered_and_never_handed_over(rigs, runtime, sku):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    envelope = {
        "id": unique_name("poison"),
        "type": "Warehouse.Events.ProductQuantityShipped",
        "schema_version": 1,
        "payload": base64.b64encode(b"\xff\xff\xff").decode("ascii"),
        "stream": None,
        "position": None,
    }
    envelope = runtime.message_keys.signed(envelope)  # as the drain would have
    send_envelope(rig.broker, rig.actors["everything"].actor_name, envelope)
    rig.process()
    assert received == {}
    [letter] = runtime.dead_letters.list("everything")
    assert (letter.message_id, bool(letter.poison), letter.attempts) == (envelope["id"], True, 1)


def test_failing_handler_is_retried_by_the_broker_until_its_last_attempt(
    rigs, commands, runtime, sku
):
    attempts = []

    def always_fails(message):
        attempts.append(message.id)
        raise RuntimeError("handler is broken")

    spec = listener("broken", always_fails, attempts=3)
    rig = rigs([spec])
    message = commands.increase_product_quantity(sku, 1)
    rig.drain.run()
    rig.process()
    assert attempts == [message.id] * 3
    [letter] = runtime.dead_letters.list("broken")
    assert (letter.message_id, bool(letter.poison), letter.attempts) == (message.id, False, 3)


def test_handler_that_fails_once_is_applied_on_its_retry(rigs, commands, runtime, sku):
    calls, applied = [], []

    def fails_first(message):
        calls.append(message.id)
        if len(calls) == 1:
            raise RuntimeError("transient")
        applied.append(message)

    spec = listener("flaky", fails_first, attempts=3)
    rig = rigs([spec])
    message = commands.increase_product_quantity(sku, 1)
    rig.drain.run()
    rig.process()
    assert calls == [message.id, message.id]
    assert applied == [message]
    assert runtime.dead_letters.list("flaky") == []


def test_a_delivery_left_by_a_run_with_another_key_is_handed_over_signed_and_applied(
    rigs, commands, runtime, sku
):
    received = defaultdict(list)
    rig = rigs([recorder("everything", ["#"], received)])
    sent = commands.increase_product_quantity(sku, 5)
    last_run = InProcessTransport(rig.transport.routing, MessageKeys.random())
    with runtime.database.atomic():  # drained, then the process died before handing over
        last_run.publisher.publish(runtime.storage.outbox.take(10))
    [record] = Delivery.select()
    assert SIGNATURE not in json.loads(record.envelope)  # recorded unsigned

    assert rig.transport.start() == 1  # this run, whose key is another
    rig.process()

    assert [m.id for m in received["everything"]] == [sent.id]
    assert runtime.dead_letters.list() == [] and list(Delivery.select()) == []
