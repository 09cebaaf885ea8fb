"""Per-stream order, exactly-once effect and dead letters in the listener engine.

Messages are delivered straight to ``Engine.apply`` through the real Avro round
trip, on SQLite and PostgreSQL; no broker.
"""

from __future__ import annotations

import pytest

from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import HeldMessage, OutboxRecord
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED
from cqrs_warehouse.warehouse.processors.low_quantity import quantity_of
from tests.db.listening import apply, delivered, event, listener, recorder, warehouse_handler


@pytest.fixture
def engine(runtime):
    return runtime.engine


def increase(sku: str, position: int) -> Message:
    return event(PRODUCT_QUANTITY_INCREASED, sku, 1, position)


def test_a_later_message_is_held_until_its_predecessor_is_applied(engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    # Given positions 3 and 2 arrive before 1
    assert apply(engine, spec, increase(sku, 3)) == [Outcome.HELD]
    assert apply(engine, spec, increase(sku, 2)) == [Outcome.HELD]
    assert seen == []
    # When 1 arrives, then 1, 2, 3 are applied in order, in its transaction
    assert apply(engine, spec, increase(sku, 1)) == [Outcome.APPLIED]
    assert seen == [1, 2, 3]
    assert HeldMessage.select().count() == 0


def test_a_redelivered_message_of_an_applied_position_is_skipped(engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    first = increase(sku, 1)
    assert apply(engine, spec, first) == [Outcome.APPLIED]
    assert apply(engine, spec, first) == [Outcome.DUPLICATE]
    # A duplicate of a held message is held once
    later = increase(sku, 3)
    assert apply(engine, spec, later) == [Outcome.HELD]
    assert apply(engine, spec, later) == [Outcome.HELD]
    assert HeldMessage.select().count() == 1
    assert seen == [1]


def test_the_notifier_decides_as_serial_processing_does_whatever_the_arrival_order(
    runtime, engine, commands, sku
):
    # Given the commands commit Increased 10, Shipped 4, Shipped 1, Increased 3
    commands.increase_product_quantity(sku, 10)
    commands.ship_product_quantity(sku, 4)
    commands.ship_product_quantity(sku, 1)
    commands.increase_product_quantity(sku, 3)
    events = runtime.outbox.pending()
    OutboxRecord.delete().execute()
    # When the notifier receives them reversed, with a duplicate
    notifier = listener("low_product_quantity_notifier", warehouse_handler(runtime, "notifier"))
    for message in [events[3], events[2], events[1], events[2], events[0]]:
        apply(engine, notifier, message)
    assert quantity_of(sku) == 8
    # Serially only Shipped 1 (leaving 5) notifies; out of order, Shipped 1
    # first would have left -1 and notified too.
    notified = [
        m for m in runtime.outbox.pending() if m.type.endswith("NotifiedLowProductQuantity")
    ]
    assert [m.payload for m in notified] == [{"sku": sku}]


def test_streams_of_other_skus_are_not_held_by_a_gap_in_one(engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = sku + "_other"
    assert apply(engine, spec, increase(sku, 2)) == [Outcome.HELD]
    assert apply(engine, spec, increase(other, 1)) == [Outcome.APPLIED]
    assert seen == [1]


def test_a_failing_handler_is_retried_and_dead_lettered_after_its_last_attempt(
    runtime, engine, sku
):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={1}, attempts=3)
    envelope = delivered(engine, increase(sku, 1))
    for attempt in (1, 2):
        with pytest.raises(RuntimeError):
            engine.apply(spec, [envelope], attempt=attempt)
        assert runtime.dead_letters.list("rec") == []
    assert engine.apply(spec, [envelope], attempt=3) == [Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("rec")
    assert (letter.message_id, letter.attempts, letter.poison) == (envelope["id"], 3, 0)
    assert "handler refuses position 1" in letter.error
    assert seen == []


def test_a_poison_message_is_dead_lettered_at_once_and_never_handed_over(runtime, engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    envelope = delivered(engine, increase(sku, 1), payload="AAAA")  # not an Increased record
    assert engine.apply(spec, [envelope], attempt=1) == [Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("rec")
    assert letter.poison == 1 and letter.attempts == 1
    assert seen == []


def test_discarding_a_dead_letter_releases_the_later_messages_of_its_stream(runtime, engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={1}, attempts=1)
    assert apply(engine, spec, increase(sku, 1)) == [Outcome.DEAD_LETTERED]
    assert apply(engine, spec, increase(sku, 2)) == [Outcome.HELD]
    [letter] = runtime.dead_letters.list("rec")
    runtime.dead_letters.discard(letter.id)
    assert runtime.dead_letters.list("rec") == []
    # Position 2 is now up next; the sweep hands it over again
    sent: list[tuple[str, dict]] = []
    # (signed, as a transport's send signs it)
    resend = lambda name, env: sent.append((name, runtime.message_keys.signed(env)))  # noqa: E731
    assert engine.resend_ready_held(resend) == 1
    [(name, envelope)] = sent
    assert name == "rec" and envelope["position"] == 2
    assert engine.apply(spec, [envelope], attempt=1) == [Outcome.APPLIED]
    assert seen == [2]


def test_replaying_a_dead_letter_applies_it_and_its_held_successors(runtime, engine, sku):
    seen: list[int] = []
    failing = {1}
    spec = recorder("rec", seen, fail_on=failing, attempts=1)
    apply(engine, spec, increase(sku, 1))
    apply(engine, spec, increase(sku, 2))
    [letter] = runtime.dead_letters.list("rec")
    failing.clear()  # the operator fixed the cause

    assert engine.replay(spec, letter) == Outcome.APPLIED
    assert seen == [1, 2]
    assert runtime.dead_letters.list("rec") == []


def test_a_dead_letter_replayed_that_fails_again_is_kept_with_the_new_error(runtime, engine, sku):
    failing = {1}
    spec = recorder("rec", [], fail_on=failing, attempts=2)
    apply(engine, spec, increase(sku, 1), attempt=2)
    [letter] = runtime.dead_letters.list("rec")
    assert letter.attempts == 2

    assert engine.replay(spec, letter) == Outcome.DEAD_LETTERED

    [kept] = runtime.dead_letters.list("rec")  # one per message, never a second
    assert (kept.id, kept.attempts) == (letter.id, 3)
    assert "handler refuses position 1" in kept.error


def shipped_only(seen: list) -> object:
    def handle(message: Message) -> None:
        seen.append((message.position, message.payload["quantity"]))

    return listener("shipped_only", handle, bindings=("Warehouse.Events.ProductQuantityShipped.*",))


def test_a_listener_bound_to_some_events_waits_only_for_the_ones_it_receives(
    runtime, engine, commands, sku
):
    # Given Increased 10 (1), Shipped 2 (2), Increased 1 (3), Shipped 3 (4)
    commands.increase_product_quantity(sku, 10)
    commands.ship_product_quantity(sku, 2)
    commands.increase_product_quantity(sku, 1)
    commands.ship_product_quantity(sku, 3)
    shipped = [m for m in runtime.outbox.pending() if m.type == PRODUCT_QUANTITY_SHIPPED]
    seen: list = []
    spec = shipped_only(seen)
    # The second shipment waits for the first, never for the increases
    assert apply(engine, spec, shipped[1]) == [Outcome.HELD]
    assert apply(engine, spec, shipped[0]) == [Outcome.APPLIED]
    assert seen == [(2, 2), (4, 3)]
