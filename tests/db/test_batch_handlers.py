"""Set-based listening: the messages of a batch that are next in their streams
are claimed together (``listener_state.claim_runs``) and handed to the
listener's batch handler in one call; the warehouse's batch handlers have
exactly the effect of their one-message handlers. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from typing import Any

import peewee
import pytest

from cqrs_warehouse.messaging import listener_state
from cqrs_warehouse.messaging.archive import ArchivedMessage, archive_message
from cqrs_warehouse.messaging.listener_state import Run
from cqrs_warehouse.messaging.listeners import (
    Outcome,
    apply_message,
    apply_messages,
    batch_order,
    run_listener_batch,
)
from cqrs_warehouse.messaging.message import Message, batch_handler_for
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.messaging.routing import ListenerSpec
from cqrs_warehouse.messaging.transport import message_from_envelope
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.views.products import handler as products
from tests.conftest import unique_name
from tests.db.test_deferred_begin import record_queries
from tests.db.test_listener_batches import Retries, held_positions, position_of
from tests.db.test_ordering_and_dead_letters import REGISTRY, envelope_of, event


class Calls:
    """A listener with a batch handler, recording what each of its handlers got."""

    def __init__(self, name: str = "batched") -> None:
        self.one: list[tuple[str, int]] = []  # (stream, position) per single call
        self.batches: list[list[tuple[str, int]]] = []

        def handle(message: Message) -> None:
            self.one.append((message.stream, message.position))

        @batch_handler_for(handle)
        def handle_many(messages: list[Message]) -> None:
            self.batches.append([(m.stream, m.position) for m in messages])

        self.spec = ListenerSpec(name=name, handler_path="", handler=handle, bindings=("#",))


def received(*messages: Message) -> list[Message]:
    """The messages as a listener receives them, in the order a batch is applied."""
    return sorted(
        (message_from_envelope(envelope_of(m), REGISTRY) for m in messages), key=batch_order
    )


def increases(sku: str, *positions: int) -> list[Message]:
    return [event(PRODUCT_QUANTITY_INCREASED, sku, 1, p) for p in positions]


def test_the_next_messages_of_each_stream_go_to_the_batch_handler_in_one_call(db, sku):
    calls = Calls()
    other, later = unique_name("sku"), unique_name("sku")

    outcomes = apply_messages(
        calls.spec, received(*increases(sku, 1, 2, 3), *increases(other, 1), *increases(later, 2))
    )

    assert calls.batches == [sorted([(sku, 1), (sku, 2), (sku, 3), (other, 1)])]
    assert calls.one == []  # later's 2 waits for its 1: held, not handled
    assert held_positions("batched") == [2]
    assert (position_of("batched", sku), position_of("batched", other)) == (3, 1)
    assert sorted(outcomes) == sorted([Outcome.APPLIED] * 4 + [Outcome.HELD])


def test_after_a_gap_the_rest_of_a_stream_waits_and_the_gap_releases_it(db, sku):
    calls = Calls()

    apply_messages(calls.spec, received(*increases(sku, 1, 2, 4, 5)))

    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert held_positions("batched") == [4, 5]
    assert apply_message(calls.spec, received(*increases(sku, 3))[0]) == Outcome.APPLIED
    assert calls.one == [(sku, 3), (sku, 4), (sku, 5)]  # 3 alone, then what it released
    assert position_of("batched", sku) == 5 and held_positions("batched") == []


def test_messages_already_applied_are_duplicates_and_not_handled_again(db, sku):
    calls = Calls()
    apply_messages(calls.spec, received(*increases(sku, 1, 2)))

    again = apply_messages(calls.spec, received(*increases(sku, 1, 2, 3)))

    assert again == [Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.APPLIED]
    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert calls.one == [(sku, 3)]  # after the duplicate, the stream went one at a time
    assert position_of("batched", sku) == 3


def test_a_run_whose_stream_holds_its_successor_releases_it_in_the_same_transaction(db, sku):
    calls = Calls()
    assert apply_message(calls.spec, received(*increases(sku, 3))[0]) == Outcome.HELD

    apply_messages(calls.spec, received(*increases(sku, 1, 2)))

    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert calls.one == [(sku, 3)]
    assert position_of("batched", sku) == 3 and held_positions("batched") == []


def test_a_listener_without_a_batch_handler_gets_each_message_under_its_correlation_id(db, sku):
    from cqrs_warehouse.messaging import context

    seen: list[tuple[int, str | None]] = []

    def handle(message: Message) -> None:
        seen.append((message.position, context.correlation_id.get()))

    spec = ListenerSpec(name="plain", handler_path="", handler=handle, bindings=("#",))
    envelopes = [envelope_of(m) for m in increases(sku, 1, 2)]
    for number, envelope in enumerate(envelopes):
        envelope["correlation_id"] = f"request-{number}"

    run_listener_batch(spec, tuple(envelopes), REGISTRY, attempt=1, retry_later=Retries())

    assert seen == [(1, "request-0"), (2, "request-1")]


def test_claim_runs_takes_the_runs_that_are_next_and_reports_held_counts(db, sku):
    fresh, waiting, behind, holding = (f"{sku}-{n}" for n in range(4))
    listener_state.claim_runs("l", [Run(behind, 0, 1, 3), Run(holding, 0, 1, 1)])
    with db.atomic():
        listener_state.set_position("l", holding, 1, 2)  # holds 2 messages

    claimed = listener_state.claim_runs(
        "l",
        [
            Run(fresh, 0, 1, 2),  # a new stream from its start
            Run(waiting, 1, 2, 2),  # a new stream, but its position 1 is missing
            Run(behind, 2, 3, 4),  # 3 is applied already: not next
            Run(holding, 1, 2, 5),
        ],
    )

    assert claimed == {fresh: 0, holding: 2}
    assert position_of("l", fresh) == 2 and position_of("l", holding) == 5
    assert position_of("l", behind) == 3
    assert position_of("l", waiting) in (None, 0)  # nothing applied there


def changes(sku: str) -> list[Message]:
    """Increases and shipments of one SKU that go below the threshold and back, twice."""
    threshold = low_quantity.DEFAULT_THRESHOLD
    kinds_and_quantities = [
        (PRODUCT_QUANTITY_INCREASED, threshold + 3),
        (PRODUCT_QUANTITY_SHIPPED, 2),  # threshold + 1 left: no notification
        (PRODUCT_QUANTITY_SHIPPED, 2),  # threshold - 1: notified
        (PRODUCT_QUANTITY_SHIPPED, 1),  # threshold - 2: notified again
        (PRODUCT_QUANTITY_INCREASED, 10),
        (PRODUCT_QUANTITY_SHIPPED, 7),  # threshold + 1: no
        (PRODUCT_QUANTITY_SHIPPED, 6),  # 0: notified
    ]
    messages = []
    for position, (kind, quantity) in enumerate(kinds_and_quantities, start=1):
        previous = {
            f"{k}.v1": p for p, (k, _) in enumerate(kinds_and_quantities[: position - 1], 1)
        }
        messages.append(
            Message(
                type=kind,
                schema_version=1,
                payload={"sku": sku, "quantity": quantity},
                stream=sku,
                position=position,
                predecessors=previous,
            )
        )
    return messages


def with_correlation_ids(messages: list[Message], prefix: str) -> tuple[dict[str, Any], ...]:
    envelopes = []
    for message in messages:
        envelope = envelope_of(message)
        envelope["correlation_id"] = f"{prefix}-{message.position}"
        envelopes.append(envelope)
    return tuple(envelopes)


def notifications(sku: str) -> list[str | None]:
    """The correlation ids of the notifications of ``sku`` in the outbox, in the
    order they were written."""
    records = OutboxRecord.select().where(OutboxRecord.type == NOTIFIED_LOW_PRODUCT_QUANTITY)
    found = []
    for record in records.order_by(OutboxRecord.id):
        payload = REGISTRY.decode(record.type, record.schema_version, bytes(record.payload))
        if payload["sku"] == sku:
            found.append(record.correlation_id)
    return found


def warehouse_listener(listener: str) -> ListenerSpec:
    """One of the warehouse's listeners ("view", "notifier", "archive"), bound to everything."""
    handlers = {
        "view": products.handle_message,
        "notifier": low_quantity.handle_message,
        "archive": archive_message,
    }
    return ListenerSpec(
        name=unique_name(listener), handler_path="", handler=handlers[listener], bindings=("#",)
    )


def effect_on(listener: str, sku: str) -> int:
    """What a warehouse listener ("view", "notifier", "archive") holds of ``sku``:
    its quantity, or how many of its messages were archived."""
    if listener == "view":
        return products.quantity_of(sku)
    if listener == "notifier":
        return low_quantity.quantity_of(sku)
    return ArchivedMessage.select().where(ArchivedMessage.stream == sku).count()


@pytest.mark.parametrize("listener", ["view", "notifier", "archive"])
def test_each_warehouse_batch_handler_has_the_effect_of_its_one_message_handler(db, sku, listener):
    spec = warehouse_listener(listener)
    together, alone = f"{sku}-t", f"{sku}-a"
    # Several SKUs in one batch, as a consumer would gather them.
    run_listener_batch(
        spec,
        with_correlation_ids(changes(together), "t") + with_correlation_ids(increases(sku, 1), "x"),
        REGISTRY,
        attempt=1,
        retry_later=Retries(),
    )
    for envelope in with_correlation_ids(changes(alone), "a"):
        run_listener_batch(spec, (envelope,), REGISTRY, attempt=1, retry_later=Retries())

    if listener == "view":
        assert products.quantity_of(together) == products.quantity_of(alone) == 0
        assert products.quantity_of(sku) == 1
    elif listener == "notifier":
        assert low_quantity.quantity_of(together) == low_quantity.quantity_of(alone) == 0
        # Notified after positions 3, 4 and 7, in that order, each under its
        # message's correlation id.
        assert notifications(together) == ["t-3", "t-4", "t-7"]
        assert notifications(alone) == ["a-3", "a-4", "a-7"]
    else:
        for stream, prefix in ((together, "t"), (alone, "a")):
            rows = ArchivedMessage.select().where(ArchivedMessage.stream == stream)
            assert [
                (row.position, row.correlation_id, bytes(row.payload))
                for row in rows.order_by(ArchivedMessage.id)
            ] == [
                (m.position, f"{prefix}-{m.position}", REGISTRY.encode(m.type, 1, m.payload))
                for m in changes(stream)
            ]


# (SQLite runs one writer at a time: nothing concurrent to check there.)
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_concurrent_batches_of_one_listener_over_the_same_streams_apply_each_message_once(db, sku):
    assert isinstance(db, peewee.PostgresqlDatabase)
    streams = [f"{sku}-{n:02d}" for n in range(12)]
    spec = ListenerSpec(
        name=unique_name("view"),
        handler_path="",
        handler=products.handle_message,
        bindings=("#",),
    )
    rounds = 15
    # Both workers get every message (as after a redelivery), in batches of
    # one message per stream: each waits on the other's claims.
    batches = [
        [envelope_of(m) for s in streams for m in increases(s, position)]
        for position in range(1, rounds + 1)
    ]
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for batch in batches:
                run_listener_batch(spec, tuple(batch), REGISTRY, attempt=1, retry_later=Retries())
        except BaseException as error:  # reported below, on the test's thread
            failures.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert [products.quantity_of(s) for s in streams] == [rounds] * len(streams)
    assert [position_of(spec.name, s) for s in streams] == [rounds] * len(streams)


def test_the_archive_keeps_a_batch_whose_columns_are_all_empty_in_places(db, sku):
    # First positions (no predecessors) of several streams, and no correlation ids.
    streams = [f"{sku}-{n}" for n in range(3)]
    spec = ListenerSpec(name="archive", handler_path="", handler=archive_message, bindings=("#",))

    outcomes = apply_messages(spec, received(*(m for s in streams for m in increases(s, 1))))

    assert outcomes == [Outcome.APPLIED] * 3
    rows = ArchivedMessage.select().where(ArchivedMessage.stream << streams)
    assert sorted((r.stream, r.position, r.predecessors, r.correlation_id) for r in rows) == [
        (s, 1, None, None) for s in streams
    ]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("listener", "kind", "round_trips"),
    [
        ("view", PRODUCT_QUANTITY_INCREASED, 2),
        ("archive", PRODUCT_QUANTITY_INCREASED, 2),
        ("notifier", PRODUCT_QUANTITY_INCREASED, 2),  # an increase never notifies
        ("notifier", PRODUCT_QUANTITY_SHIPPED, 3),  # the quantity left decides
    ],
)
def test_a_listeners_next_message_is_its_claim_then_its_write_with_the_commit(
    db, sku, monkeypatch, listener, kind, round_trips
):
    spec = warehouse_listener(listener)
    for position in (1, 2):  # the statements prepared (a stream's first claim is another)
        apply_messages(spec, received(event(PRODUCT_QUANTITY_INCREASED, sku, 100, position)))
    sent = record_queries(monkeypatch)

    assert apply_messages(spec, received(event(kind, sku, 1, 3))) == [Outcome.APPLIED]

    assert len(sent) == round_trips, sent
    assert sent[0].startswith("BEGIN; ") and "messaging_stream_positions" in sent[0]
    assert sent[-1].endswith("COMMIT")
    # The write goes with the COMMIT, unless the handler reads what it returns.
    assert (sent[-1] == "COMMIT") == (round_trips == 3)
    expected = 199 if kind == PRODUCT_QUANTITY_SHIPPED else 201
    assert effect_on(listener, sku) == (3 if listener == "archive" else expected)


def test_messages_whose_copies_are_held_are_duplicates_in_a_batch_as_one_at_a_time(db, sku):
    # Copies of 3 and 2 came first, out of order: both held, waiting for 1.
    calls = Calls()
    for copy in received(*increases(sku, 3, 2)):
        assert apply_message(calls.spec, copy) == Outcome.HELD
    alone = Calls("alone")
    for copy in received(*increases(sku, 3, 2)):
        assert apply_message(alone.spec, copy) == Outcome.HELD

    together = apply_messages(calls.spec, received(*increases(sku, 1, 2, 3, 4)))
    one_at_a_time = [apply_message(alone.spec, m) for m in received(*increases(sku, 1, 2, 3, 4))]

    # 1 releases the held 2 and 3; the delivered 2 and 3 are their duplicates.
    expected = [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.APPLIED]
    assert together == one_at_a_time == expected
    assert calls.batches == [[(sku, 1)]]
    assert calls.one == [(sku, 2), (sku, 3), (sku, 4)]
    assert alone.one == [(sku, 1), (sku, 2), (sku, 3), (sku, 4)]
    assert position_of("batched", sku) == position_of("alone", sku) == 4
    assert held_positions("batched") == held_positions("alone") == []


def test_a_run_is_cut_only_at_a_held_copy_of_one_of_its_messages(db, sku):
    # 5 is held (it waits for 4); the run 1-3 does not reach it and stays whole.
    calls = Calls()
    assert apply_message(calls.spec, received(*increases(sku, 5))[0]) == Outcome.HELD

    outcomes = apply_messages(calls.spec, received(*increases(sku, 1, 2, 3)))

    assert outcomes == [Outcome.APPLIED] * 3
    assert calls.batches == [[(sku, 1), (sku, 2), (sku, 3)]]
    assert position_of("batched", sku) == 3 and held_positions("batched") == [5]
