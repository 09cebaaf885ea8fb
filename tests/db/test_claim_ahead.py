"""Claiming ahead (PostgreSQL): a ``rollback_safe`` handler runs with the
listener's claim sent along with its first statement or its COMMIT, and a
message that turns out not to be next is undone and applied the usual way.
Each message's effect stays exactly once.
"""

from __future__ import annotations

import contextlib
import logging

import peewee
import pytest

from cqrs_warehouse.messaging import listener_state, outbox
from cqrs_warehouse.messaging.listeners import Outcome, apply_message, claiming_ahead
from cqrs_warehouse.messaging.message import Message, is_rollback_safe, rollback_safe
from cqrs_warehouse.messaging.routing import ListenerSpec
from cqrs_warehouse.messaging.testing import pending_messages
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.views.products import handler as products
from tests.conftest import unique_name
from tests.db.test_batch_handlers import effect_on, received, warehouse_listener
from tests.db.test_deferred_begin import record_queries
from tests.db.test_listener_batches import held_positions, position_of
from tests.db.test_ordering_and_dead_letters import event

pytestmark = pytest.mark.parametrize("db", ["postgres"], indirect=True)


def one(message: Message) -> Message:
    [delivered] = received(message)
    return delivered


def increase(sku: str, quantity: int, position: int) -> Message:
    return one(event(PRODUCT_QUANTITY_INCREASED, sku, quantity, position))


class CountingView:
    """The products view's handler, declared rollback-safe, counting its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

        @rollback_safe
        def handle(message: Message) -> None:
            self.calls.append(message.position or 0)
            products.handle_message(message)

        self.spec = ListenerSpec(
            name=unique_name("view"), handler_path="", handler=handle, bindings=("#",)
        )


def test_the_warehouse_listeners_are_rollback_safe(db):
    for listener in ("view", "notifier", "archive"):
        assert is_rollback_safe(warehouse_listener(listener).handler), listener


@pytest.mark.parametrize(
    ("listener", "kind", "round_trips"),
    [
        ("view", PRODUCT_QUANTITY_INCREASED, 1),
        ("archive", PRODUCT_QUANTITY_INCREASED, 1),
        ("notifier", PRODUCT_QUANTITY_INCREASED, 1),  # an increase never notifies
        ("notifier", PRODUCT_QUANTITY_SHIPPED, 1),  # betting it leaves more than 5
    ],
)
def test_a_rollback_safe_listeners_next_message_takes_a_round_trip_fewer(
    db, sku, monkeypatch, listener, kind, round_trips
):
    spec = warehouse_listener(listener)
    # The statements prepared (a stream's first claim is another).
    apply_message(spec, increase(sku, 100, 1))
    apply_message(spec, one(event(kind, sku, 1, 2)))
    sent = record_queries(monkeypatch)

    assert apply_message(spec, one(event(kind, sku, 1, 3))) == Outcome.APPLIED

    assert len(sent) == round_trips, sent
    assert sent[0].startswith("BEGIN; ") and "claim_next" in sent[0]
    assert sent[-1].endswith("COMMIT")
    assert position_of(spec.name, sku) == 3
    expected = 98 if kind == PRODUCT_QUANTITY_SHIPPED else 102
    assert effect_on(listener, sku) == (3 if listener == "archive" else expected)


def test_a_handler_not_declared_rollback_safe_waits_for_its_claim(db, sku, monkeypatch):
    calls: list[int] = []

    def handle(message: Message) -> None:
        calls.append(message.position or 0)
        products.handle_message(message)

    spec = ListenerSpec(name=unique_name("plain"), handler_path="", handler=handle, bindings=("#",))
    apply_message(spec, increase(sku, 1, 1))
    apply_message(spec, increase(sku, 1, 2))
    sent = record_queries(monkeypatch)

    assert apply_message(spec, increase(sku, 1, 4)) == Outcome.HELD

    assert calls == [1, 2]  # never called for the held message
    assert not any("claim_next" in query for query in sent)


def test_a_message_that_is_not_next_is_undone_and_held(db, sku):
    view = CountingView()
    apply_message(view.spec, increase(sku, 1, 1))

    assert apply_message(view.spec, increase(sku, 10, 3)) == Outcome.HELD

    assert products.quantity_of(sku) == 1  # what the early call wrote was undone
    assert held_positions(view.spec.name) == [3]
    assert position_of(view.spec.name, sku) == 1


def test_a_held_message_is_applied_once_with_its_predecessor(db, sku):
    view = CountingView()
    apply_message(view.spec, increase(sku, 1, 1))
    apply_message(view.spec, increase(sku, 10, 3))  # held
    view.calls.clear()

    # 2 is next, but a held message waits for it: refused, then applied the
    # usual way, with 3 after it.
    assert apply_message(view.spec, increase(sku, 100, 2)) == Outcome.APPLIED

    assert products.quantity_of(sku) == 111
    assert position_of(view.spec.name, sku) == 3
    assert held_positions(view.spec.name) == []
    assert view.calls == [2, 2, 3]  # 2 early (undone), then 2 and 3 for good


def test_a_duplicate_is_undone_and_skipped(db, sku):
    view = CountingView()
    first = increase(sku, 5, 1)
    assert apply_message(view.spec, first) == Outcome.APPLIED

    assert apply_message(view.spec, first) == Outcome.DUPLICATE

    assert products.quantity_of(sku) == 5
    assert position_of(view.spec.name, sku) == 1


def test_a_stream_whose_first_message_waits_for_an_earlier_one_is_held(db, sku):
    view = CountingView()

    assert apply_message(view.spec, increase(sku, 7, 2)) == Outcome.HELD

    assert products.quantity_of(sku) == 0
    assert held_positions(view.spec.name) == [2]


def test_a_handler_error_is_raised_as_it_is_and_nothing_is_kept(db, sku):
    @rollback_safe
    def fail_after_writing(message: Message) -> None:
        products.handle_message(message)
        raise RuntimeError("after writing")

    spec = ListenerSpec(
        name=unique_name("failing"), handler_path="", handler=fail_after_writing, bindings=("#",)
    )

    with pytest.raises(RuntimeError, match="after writing"):
        apply_message(spec, increase(sku, 3, 1))

    assert products.quantity_of(sku) == 0
    assert position_of(spec.name, sku) is None


def test_a_statement_error_of_the_handler_is_raised_by_the_usual_way(db, sku):
    calls: list[bool] = []

    @rollback_safe
    def bad_statement(message: Message) -> None:
        calls.append(claiming_ahead())
        db.execute_sql("SELECT no_such_column FROM messaging.messaging_stream_positions")

    spec = ListenerSpec(
        name=unique_name("bad"), handler_path="", handler=bad_statement, bindings=("#",)
    )

    with pytest.raises(peewee.ProgrammingError) as raised:
        apply_message(spec, increase(sku, 3, 1))

    assert not listener_state.refused_claim(raised.value)
    assert calls == [True, False]  # ahead, then the usual way, which raised it
    assert position_of(spec.name, sku) is None


def test_a_handler_that_catches_the_refusal_and_goes_on_still_gets_its_message_held(db, sku):
    @rollback_safe
    def stubborn(message: Message) -> None:
        products.handle_message(message)
        # The claim goes with this statement and is refused; the handler
        # goes on, and the COMMIT fails instead.
        with contextlib.suppress(peewee.DatabaseError):
            db.execute_sql("SELECT 1")

    spec = ListenerSpec(
        name=unique_name("stubborn"), handler_path="", handler=stubborn, bindings=("#",)
    )
    assert apply_message(spec, increase(sku, 1, 1)) == Outcome.APPLIED

    assert apply_message(spec, increase(sku, 10, 3)) == Outcome.HELD

    assert products.quantity_of(sku) == 1
    assert held_positions(spec.name) == [3]


def test_inside_another_transaction_the_claim_is_not_sent_ahead(db, sku, monkeypatch):
    view = CountingView()
    apply_message(view.spec, increase(sku, 1, 1))
    sent = record_queries(monkeypatch)

    # As a dead letter's replay does: a refusal would undo the caller's work too.
    with outbox.transaction():
        assert apply_message(view.spec, increase(sku, 1, 3)) == Outcome.HELD

    assert not any("claim_next" in query for query in sent)
    assert view.calls == [1]


def test_a_shipment_that_leaves_the_quantity_low_loses_the_notifiers_bet_and_notifies(
    db, sku, caplog, monkeypatch
):
    spec = warehouse_listener("notifier")
    apply_message(spec, increase(sku, 100, 1))
    apply_message(spec, one(event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 2)))  # (prepared)
    sent = record_queries(monkeypatch)

    with caplog.at_level(logging.WARNING):
        assert apply_message(spec, one(event(PRODUCT_QUANTITY_SHIPPED, sku, 95, 3))) == (
            Outcome.APPLIED
        )

    # The bet, in one round trip, lost; then the usual way.
    assert sent[0].startswith("BEGIN; ") and sent[0].endswith("COMMIT"), sent
    assert sent[1].startswith("BEGIN; "), sent  # (psycopg2 sent the ROLLBACK)
    assert low_quantity.quantity_of(sku) == 4  # the lost bet's write was undone
    assert [r.getMessage() for r in caplog.records if sku in r.getMessage()] == [
        f"Low quantity of product {sku}: 4 remaining"
    ]
    notified = [m for m in pending_messages() if m.type == NOTIFIED_LOW_PRODUCT_QUANTITY]
    assert [m.payload for m in notified] == [{"sku": sku}]
    assert position_of(spec.name, sku) == 3


def test_a_notification_is_logged_once_when_its_shipment_is_applied(db, sku, caplog):
    spec = warehouse_listener("notifier")
    apply_message(spec, increase(sku, 6, 1))

    with caplog.at_level(logging.WARNING):
        # Shipped 1 of the 6 arrives before Shipped 2 of them: the early call
        # leaves 5 and would notify, but the message is held.
        assert apply_message(spec, one(event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 3))) == (
            Outcome.HELD
        )
        assert [r for r in caplog.records if sku in r.getMessage()] == []

        assert apply_message(spec, one(event(PRODUCT_QUANTITY_SHIPPED, sku, 2, 2))) == (
            Outcome.APPLIED
        )

    # Serially: 6, 4 (notifies), 3 (notifies); each once.
    assert [r.getMessage() for r in caplog.records if sku in r.getMessage()] == [
        f"Low quantity of product {sku}: 4 remaining",
        f"Low quantity of product {sku}: 3 remaining",
    ]
    assert low_quantity.quantity_of(sku) == 3


def test_a_handler_knows_whether_it_runs_ahead_of_its_claim(db, sku):
    seen: list[tuple[int, bool]] = []

    @rollback_safe
    def handle(message: Message) -> None:
        seen.append((message.position or 0, claiming_ahead()))

    spec = ListenerSpec(name=unique_name("ahead"), handler_path="", handler=handle, bindings=("#",))
    apply_message(spec, increase(sku, 1, 1))
    apply_message(spec, increase(sku, 1, 3))  # held
    apply_message(spec, increase(sku, 1, 2))  # refused (3 waits for it), then the usual way

    assert seen == [(1, True), (3, True), (2, True), (2, False), (3, False)]
    assert claiming_ahead() is False
