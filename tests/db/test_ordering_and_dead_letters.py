"""Per-stream order, exactly-once effect and dead letters in the listener runner.

Messages are fed straight to the runner through the real Avro round trip, on
SQLite and PostgreSQL; no broker.
"""

from __future__ import annotations

import json

import pytest

from cqrs_warehouse.messaging import dead_letters, listener_state
from cqrs_warehouse.messaging.listeners import Outcome, apply_message, run_listener
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.messaging.routing import ListenerSpec, RetryPolicy
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.testing import clear_outbox, pending_messages, round_trip
from cqrs_warehouse.messaging.transport import envelope_from_record
from cqrs_warehouse.warehouse.commands import increase_product_quantity, ship_product_quantity
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.processors.low_quantity import quantity_of
from tests.conftest import SCHEMAS

REGISTRY = SchemaRegistry(SCHEMAS)


def event(kind: str, sku: str, quantity: int, position: int) -> Message:
    """The position-th event of a stream whose events all have ``kind``."""
    key = f"{kind}.v1"
    return Message(
        type=kind,
        schema_version=1,
        payload={"sku": sku, "quantity": quantity},
        stream=sku,
        position=position,
        predecessors={key: position - 1} if position > 1 else {},
    )


def notifier() -> ListenerSpec:
    return ListenerSpec(
        name="low_product_quantity_notifier",
        handler_path="cqrs_warehouse.warehouse.processors.low_quantity:handle_message",
        handler=low_quantity.handle_message,
        bindings=("Warehouse.Events.#",),
    )


def recorder(name: str, seen: list, *, fail_on: set[int] | None = None, attempts: int = 3):
    def handle(message: Message) -> None:
        if fail_on and message.position in fail_on:
            raise RuntimeError(f"handler refuses position {message.position}")
        seen.append(message.position)

    return ListenerSpec(
        name=name,
        handler_path="tests:recorder",
        handler=handle,
        bindings=("#",),
        retry=RetryPolicy(max_attempts=attempts, min_delay=0.0, max_delay=0.0),
    )


def envelope_of(message: Message) -> dict:
    record = OutboxRecord(
        predecessors=json.dumps(message.predecessors),
        message_id=message.id,
        type=message.type,
        schema_version=message.schema_version,
        payload=REGISTRY.encode(message.type, message.schema_version, message.payload),
        stream=message.stream,
        position=message.position,
    )
    return envelope_from_record(record)


def test_a_later_message_is_held_until_its_predecessor_is_applied(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    # Given positions 3 and 2 arrive before 1
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 3)))
        == Outcome.HELD
    )
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 2)))
        == Outcome.HELD
    )
    assert seen == []
    # When 1 arrives, then 1, 2, 3 are applied in order, in its transaction
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1)))
        == Outcome.APPLIED
    )
    assert seen == [1, 2, 3]
    assert listener_state.HeldMessage.select().count() == 0


def test_a_redelivered_message_of_an_applied_position_is_skipped(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    first = round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1))
    assert apply_message(spec, first) == Outcome.APPLIED
    assert apply_message(spec, first) == Outcome.DUPLICATE
    # A duplicate of a held message is held once
    later = round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 3))
    assert apply_message(spec, later) == Outcome.HELD
    assert apply_message(spec, later) == Outcome.HELD
    assert listener_state.HeldMessage.select().count() == 1
    assert seen == [1]


def test_the_notifier_decides_as_serial_processing_does_whatever_the_arrival_order(db, sku):
    # Given the commands commit Increased 10, Shipped 4, Shipped 1, Increased 3
    increase_product_quantity(sku, 10)
    ship_product_quantity(sku, 4)
    ship_product_quantity(sku, 1)
    increase_product_quantity(sku, 3)
    events = pending_messages()
    clear_outbox()
    # When the notifier receives them reversed, with a duplicate
    for message in [events[3], events[2], events[1], events[2], events[0]]:
        apply_message(notifier(), round_trip(message))
    assert quantity_of(sku) == 8
    # Serially only Shipped 1 (leaving 5) notifies; out of order, Shipped 1
    # first would have left -1 and notified too.
    notified = [m for m in pending_messages() if m.type.endswith("NotifiedLowProductQuantity")]
    assert [m.payload for m in notified] == [{"sku": sku}]


def test_streams_of_other_skus_are_not_held_by_a_gap_in_one(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = sku + "_other"
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 2)))
        == Outcome.HELD
    )
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, other, 1, 1)))
        == Outcome.APPLIED
    )
    assert seen == [1]


def test_a_failing_handler_is_retried_and_dead_lettered_after_its_last_attempt(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={1}, attempts=3)
    envelope = envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1))
    for attempt in (1, 2):
        with pytest.raises(RuntimeError):
            run_listener(spec, envelope, REGISTRY, attempt=attempt)
        assert dead_letters.list_letters("rec") == []
    assert run_listener(spec, envelope, REGISTRY, attempt=3) is None
    [letter] = dead_letters.list_letters("rec")
    assert (letter.message_id, letter.attempts, letter.poison) == (envelope["id"], 3, 0)
    assert "handler refuses position 1" in letter.error
    assert seen == []


def test_a_poison_message_is_dead_lettered_at_once_and_never_handed_over(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    envelope = envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1))
    envelope["payload"] = "AAAA"  # not an Increased record
    assert run_listener(spec, envelope, REGISTRY, attempt=1) is None
    [letter] = dead_letters.list_letters("rec")
    assert letter.poison == 1 and letter.attempts == 1
    assert seen == []


def test_discarding_a_dead_letter_releases_the_later_messages_of_its_stream(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={1}, attempts=1)
    run_listener(
        spec, envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1)), REGISTRY, attempt=1
    )
    assert (
        apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 2)))
        == Outcome.HELD
    )
    [letter] = dead_letters.list_letters("rec")
    dead_letters.discard(letter.id)
    # Position 2 is now up next; the sweep hands it over again
    sent: list[tuple[str, dict]] = []
    from cqrs_warehouse.messaging.listeners import resend_ready_held

    assert resend_ready_held(lambda listener, env: sent.append((listener, env))) == 1
    [(listener, envelope)] = sent
    assert listener == "rec" and envelope["position"] == 2
    run_listener(spec, envelope, REGISTRY, attempt=1)
    assert seen == [2]


def test_replaying_a_dead_letter_applies_it_and_its_held_successors(db, sku):
    seen: list[int] = []
    failing = {1}
    spec = recorder("rec", seen, fail_on=failing, attempts=1)
    run_listener(
        spec, envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 1)), REGISTRY, attempt=1
    )
    apply_message(spec, round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 2)))
    [letter] = dead_letters.list_letters("rec")
    failing.clear()  # the operator fixed the cause

    class Routing:
        def listener(self, name):
            return spec

    assert dead_letters.replay(letter.id, Routing(), REGISTRY) == Outcome.APPLIED
    assert seen == [1, 2]
    assert dead_letters.list_letters("rec") == []


def shipped_only(seen: list) -> ListenerSpec:
    def handle(message: Message) -> None:
        seen.append((message.position, message.payload["quantity"]))

    return ListenerSpec(
        name="shipped_only",
        handler_path="tests:shipped_only",
        handler=handle,
        bindings=("Warehouse.Events.ProductQuantityShipped.*",),
    )


def test_a_listener_bound_to_some_events_waits_only_for_the_ones_it_receives(db, sku):
    # Given Increased 10 (1), Shipped 2 (2), Increased 1 (3), Shipped 3 (4)
    increase_product_quantity(sku, 10)
    ship_product_quantity(sku, 2)
    increase_product_quantity(sku, 1)
    ship_product_quantity(sku, 3)
    shipped = [m for m in pending_messages() if m.type == PRODUCT_QUANTITY_SHIPPED]
    seen: list = []
    spec = shipped_only(seen)
    # The second shipment waits for the first, never for the increases
    assert apply_message(spec, round_trip(shipped[1])) == Outcome.HELD
    assert apply_message(spec, round_trip(shipped[0])) == Outcome.APPLIED
    assert seen == [(2, 2), (4, 3)]
