"""Claiming ahead (PostgreSQL): a ``rollback_safe`` handler's ``apply_ahead``
runs with the listener's claim sent along with its first statement or its
COMMIT, and a message that turns out not to be next is undone and applied the
usual way (``apply``). Each message's effect stays exactly once.
"""

from __future__ import annotations

import contextlib
import logging

import pytest

from cqrs_warehouse.messaging.errors import RefusedClaimError, StorageError
from cqrs_warehouse.messaging.handler import Handler
from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.views import products
from tests.db.listening import (
    apply,
    effect_on,
    event,
    held_positions,
    listener,
    position_of,
    record_queries,
    warehouse_handler,
    warehouse_listener,
)
from tests.support.services import unique_name

# The runtime fixture, on PostgreSQL only (SQLite cannot send a claim along).
pytestmark = pytest.mark.parametrize("runtime", ["postgres"], indirect=True)


@pytest.fixture
def engine(runtime):
    return runtime.engine


def increase(sku: str, quantity: int, position: int) -> Message:
    return event(PRODUCT_QUANTITY_INCREASED, sku, quantity, position)


class CountingView(Handler):
    """The products view's handler, rollback-safe, counting its calls (of either form)."""

    rollback_safe = True

    def __init__(self, runtime) -> None:
        self.view = warehouse_handler(runtime, "view")
        self.calls: list[int] = []
        self.spec = listener(unique_name("view"), self)

    def apply(self, message: Message) -> None:
        self.calls.append(message.position or 0)
        self.view.apply(message)


def test_the_warehouse_listeners_are_rollback_safe(runtime):
    for kind in ("view", "notifier", "archive"):
        assert warehouse_handler(runtime, kind).rollback_safe, kind
    assert runtime.storage.positions.claims_ahead


@pytest.mark.parametrize(
    ("kind", "message_kind", "round_trips"),
    [
        ("view", PRODUCT_QUANTITY_INCREASED, 1),
        ("archive", PRODUCT_QUANTITY_INCREASED, 1),
        ("notifier", PRODUCT_QUANTITY_INCREASED, 1),  # an increase never notifies
        ("notifier", PRODUCT_QUANTITY_SHIPPED, 1),  # betting it leaves more than 5
    ],
)
def test_a_rollback_safe_listeners_next_message_takes_a_round_trip_fewer(
    runtime, engine, sku, monkeypatch, kind, message_kind, round_trips
):
    spec = warehouse_listener(runtime, kind)
    # The statements prepared (a stream's first claim is another).
    apply(engine, spec, increase(sku, 100, 1))
    apply(engine, spec, event(message_kind, sku, 1, 2))
    sent = record_queries(monkeypatch)

    assert apply(engine, spec, event(message_kind, sku, 1, 3)) == [Outcome.APPLIED]

    assert len(sent) == round_trips, sent
    assert sent[0].startswith("BEGIN; ") and "claim_next" in sent[0]
    assert sent[-1].endswith("COMMIT")
    assert position_of(engine, spec.name, sku) == 3
    expected = 98 if message_kind == PRODUCT_QUANTITY_SHIPPED else 102
    assert effect_on(kind, sku) == (3 if kind == "archive" else expected)


def test_a_handler_not_declared_rollback_safe_waits_for_its_claim(
    runtime, engine, sku, monkeypatch
):
    view = warehouse_handler(runtime, "view")
    calls: list[int] = []

    def handle(message: Message) -> None:
        calls.append(message.position or 0)
        view.apply(message)

    spec = listener(unique_name("plain"), handle)
    apply(engine, spec, increase(sku, 1, 1))
    apply(engine, spec, increase(sku, 1, 2))
    sent = record_queries(monkeypatch)

    assert apply(engine, spec, increase(sku, 1, 4)) == [Outcome.HELD]

    assert calls == [1, 2]  # never called for the held message
    assert not any("claim_next" in query for query in sent)


def test_a_message_that_is_not_next_is_undone_and_held(runtime, engine, sku):
    view = CountingView(runtime)
    apply(engine, view.spec, increase(sku, 1, 1))

    assert apply(engine, view.spec, increase(sku, 10, 3)) == [Outcome.HELD]

    assert products.quantity_of(sku) == 1  # what the early call wrote was undone
    assert held_positions(view.spec.name) == [3]
    assert position_of(engine, view.spec.name, sku) == 1


def test_a_held_message_is_applied_once_with_its_predecessor(runtime, engine, sku):
    view = CountingView(runtime)
    apply(engine, view.spec, increase(sku, 1, 1))
    apply(engine, view.spec, increase(sku, 10, 3))  # held
    view.calls.clear()

    # 2 is next, but a held message waits for it: refused, then applied the
    # usual way, with 3 after it.
    assert apply(engine, view.spec, increase(sku, 100, 2)) == [Outcome.APPLIED]

    assert products.quantity_of(sku) == 111
    assert position_of(engine, view.spec.name, sku) == 3
    assert held_positions(view.spec.name) == []
    assert view.calls == [2, 2, 3]  # 2 early (undone), then 2 and 3 for good


def test_a_duplicate_is_undone_and_skipped(runtime, engine, sku):
    view = CountingView(runtime)
    first = increase(sku, 5, 1)
    assert apply(engine, view.spec, first) == [Outcome.APPLIED]

    assert apply(engine, view.spec, first) == [Outcome.DUPLICATE]

    assert products.quantity_of(sku) == 5
    assert position_of(engine, view.spec.name, sku) == 1


def test_a_stream_whose_first_message_waits_for_an_earlier_one_is_held(runtime, engine, sku):
    view = CountingView(runtime)

    assert apply(engine, view.spec, increase(sku, 7, 2)) == [Outcome.HELD]

    assert products.quantity_of(sku) == 0
    assert held_positions(view.spec.name) == [2]


def test_a_handler_error_is_raised_as_it_is_and_nothing_is_kept(runtime, engine, sku):
    view = warehouse_handler(runtime, "view")

    class FailAfterWriting(Handler):
        rollback_safe = True

        def apply(self, message: Message) -> None:
            view.apply(message)
            raise RuntimeError("after writing")

    spec = listener(unique_name("failing"), FailAfterWriting())

    with pytest.raises(RuntimeError, match="after writing"):
        apply(engine, spec, increase(sku, 3, 1))

    assert products.quantity_of(sku) == 0
    assert position_of(engine, spec.name, sku) is None


def test_a_statement_error_of_the_handler_is_raised_by_the_usual_way(runtime, engine, sku):
    calls: list[bool] = []

    class BadStatement(Handler):
        rollback_safe = True

        def apply_ahead(self, message: Message) -> None:
            calls.append(True)
            self.bad_statement()

        def apply(self, message: Message) -> None:
            calls.append(False)
            self.bad_statement()

        def bad_statement(self) -> None:
            runtime.database.execute_sql(
                "SELECT no_such_column FROM messaging.messaging_stream_positions"
            )

    spec = listener(unique_name("bad"), BadStatement())

    with pytest.raises(StorageError) as raised:
        apply(engine, spec, increase(sku, 3, 1))

    assert not isinstance(raised.value, RefusedClaimError)
    assert calls == [True, False]  # ahead, then the usual way, which raised it
    assert position_of(engine, spec.name, sku) is None


def test_a_handler_that_catches_the_refusal_and_goes_on_still_gets_its_message_held(
    runtime, engine, sku
):
    view = warehouse_handler(runtime, "view")

    class Stubborn(Handler):
        rollback_safe = True

        def apply(self, message: Message) -> None:
            view.apply(message)
            # The claim goes with this statement and is refused; the handler
            # goes on, and the COMMIT fails instead.
            with contextlib.suppress(StorageError):
                runtime.database.execute_sql("SELECT 1")

    spec = listener(unique_name("stubborn"), Stubborn())
    assert apply(engine, spec, increase(sku, 1, 1)) == [Outcome.APPLIED]

    assert apply(engine, spec, increase(sku, 10, 3)) == [Outcome.HELD]

    assert products.quantity_of(sku) == 1
    assert held_positions(spec.name) == [3]


def test_inside_another_transaction_the_claim_is_not_sent_ahead(runtime, engine, sku, monkeypatch):
    view = CountingView(runtime)
    apply(engine, view.spec, increase(sku, 1, 1))
    sent = record_queries(monkeypatch)

    # As a dead letter's replay does: a refusal would undo the caller's work too.
    with runtime.outbox.transaction():
        assert apply(engine, view.spec, increase(sku, 1, 3)) == [Outcome.HELD]

    assert not any("claim_next" in query for query in sent)
    assert view.calls == [1]


def test_a_shipment_that_leaves_the_quantity_low_loses_the_notifiers_bet_and_notifies(
    runtime, engine, sku, caplog, monkeypatch
):
    spec = warehouse_listener(runtime, "notifier")
    apply(engine, spec, increase(sku, 100, 1))
    apply(engine, spec, event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 2))  # (prepared)
    sent = record_queries(monkeypatch)

    with caplog.at_level(logging.WARNING):
        assert apply(engine, spec, event(PRODUCT_QUANTITY_SHIPPED, sku, 95, 3)) == [Outcome.APPLIED]

    # The bet, in one round trip, lost; then the usual way.
    assert sent[0].startswith("BEGIN; ") and sent[0].endswith("COMMIT"), sent
    assert sent[1].startswith("BEGIN; "), sent  # (psycopg2 sent the ROLLBACK)
    assert low_quantity.quantity_of(sku) == 4  # the lost bet's write was undone
    assert [r.getMessage() for r in caplog.records if sku in r.getMessage()] == [
        f"Low quantity of product {sku}: 4 remaining"
    ]
    notified = [m for m in runtime.outbox.pending() if m.type == NOTIFIED_LOW_PRODUCT_QUANTITY]
    assert [m.payload for m in notified] == [{"sku": sku}]
    assert position_of(engine, spec.name, sku) == 3


def test_a_notification_is_logged_once_when_its_shipment_is_applied(runtime, engine, sku, caplog):
    spec = warehouse_listener(runtime, "notifier")
    apply(engine, spec, increase(sku, 6, 1))

    with caplog.at_level(logging.WARNING):
        # Shipped 1 of the 6 arrives before Shipped 2 of them: the early call
        # leaves 5 and would notify, but the message is held.
        assert apply(engine, spec, event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 3)) == [Outcome.HELD]
        assert [r for r in caplog.records if sku in r.getMessage()] == []

        assert apply(engine, spec, event(PRODUCT_QUANTITY_SHIPPED, sku, 2, 2)) == [Outcome.APPLIED]

    # Serially: 6, 4 (notifies), 3 (notifies); each once.
    assert [r.getMessage() for r in caplog.records if sku in r.getMessage()] == [
        f"Low quantity of product {sku}: 4 remaining",
        f"Low quantity of product {sku}: 3 remaining",
    ]
    assert low_quantity.quantity_of(sku) == 3


def test_a_handler_knows_whether_it_runs_ahead_of_its_claim(runtime, engine, sku):
    seen: list[tuple[int, bool]] = []

    class Knowing(Handler):
        rollback_safe = True

        def apply_ahead(self, message: Message) -> None:
            seen.append((message.position or 0, True))

        def apply(self, message: Message) -> None:
            seen.append((message.position or 0, False))

    spec = listener(unique_name("ahead"), Knowing())
    apply(engine, spec, increase(sku, 1, 1))
    apply(engine, spec, increase(sku, 1, 3))  # held
    apply(engine, spec, increase(sku, 1, 2))  # refused (3 waits for it), then the usual way

    assert seen == [(1, True), (3, True), (2, True), (2, False), (3, False)]
