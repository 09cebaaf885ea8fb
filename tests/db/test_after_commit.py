"""``Outbox.after_commit``: what a command or a listener does outside the
database runs once its transaction has committed, and never for one undone.
On SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.errors import NotInTransactionError
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from tests.db.listening import event, listener, warehouse_handler
from tests.support.services import unique_name


@pytest.fixture
def outbox(runtime):
    return runtime.outbox


def test_it_runs_once_the_transaction_has_committed(runtime, outbox):
    seen: list[bool] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append(runtime.database.in_transaction()))
        assert seen == []
    assert seen == [False]


def test_it_runs_in_the_order_given(outbox):
    seen: list[int] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append(1))
        with outbox.transaction():
            outbox.after_commit(lambda: seen.append(2))
        outbox.after_commit(lambda: seen.append(3))
    assert seen == [1, 2, 3]


def test_it_never_runs_for_a_transaction_rolled_back(outbox):
    seen: list[int] = []
    with pytest.raises(RuntimeError), outbox.transaction():
        outbox.after_commit(lambda: seen.append(1))
        raise RuntimeError("undo")
    with outbox.transaction():
        pass
    assert seen == []


def test_what_an_undone_savepoint_gave_is_forgotten_and_the_rest_runs(outbox):
    seen: list[str] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append("before"))
        with pytest.raises(RuntimeError), outbox.transaction():
            outbox.after_commit(lambda: seen.append("undone"))
            raise RuntimeError("undo the savepoint")
        outbox.after_commit(lambda: seen.append("after"))
    assert seen == ["before", "after"]


def test_outside_a_transaction_it_runs_at_once(outbox):
    seen: list[int] = []
    outbox.after_commit(lambda: seen.append(1))
    assert seen == [1]


def test_inside_a_transaction_it_cannot_see_commit_it_refuses(runtime, outbox):
    with runtime.database.atomic(), pytest.raises(NotInTransactionError, match="after_commit"):
        outbox.after_commit(lambda: None)


def test_a_failing_callback_is_logged_and_the_commit_and_the_others_stand(
    outbox, commands, sku, caplog
):
    seen: list[int] = []

    def fail() -> None:
        raise RuntimeError("the call out failed")

    with caplog.at_level(logging.ERROR), outbox.transaction():
        commands.notify_low_product_quantity(sku, 1)
        outbox.after_commit(fail)
        outbox.after_commit(lambda: seen.append(1))

    assert seen == [1]
    assert [m.payload for m in outbox.pending()] == [{"sku": sku}]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "after the commit failed" in record.getMessage()
    assert record.exc_info is not None and "the call out failed" in str(record.exc_info[1])


def test_it_runs_in_the_context_it_was_given_in(outbox):
    seen: list[str | None] = []
    with outbox.transaction():
        with context.bound(correlation_id="request-7"):
            outbox.after_commit(lambda: seen.append(context.correlation_id.get()))
        with context.bound(correlation_id="request-8"):
            pass
    assert seen == ["request-7"]


def test_the_notifiers_warning_comes_after_its_commit_and_not_for_an_undone_run(
    runtime, sku, caplog
):
    notifier = warehouse_handler(runtime, "notifier")
    calls: list[int] = []

    def notify_then_fail(message: Message) -> None:
        notifier.apply(message)
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("after notifying")

    spec = listener(unique_name("notifier"), notify_then_fail)
    feed(runtime.engine, notifier, event(PRODUCT_QUANTITY_INCREASED, sku, 3, 1))
    shipped = event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 1)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(RuntimeError):
            feed(runtime.engine, spec, shipped)
        assert [r for r in caplog.records if sku in r.getMessage()] == []

        feed(runtime.engine, spec, shipped)  # its retry

    [record] = [r for r in caplog.records if sku in r.getMessage()]
    assert record.getMessage() == f"Low quantity of product {sku}: 2 remaining"
    assert low_quantity.quantity_of(sku) == 2
    assert [m.type for m in runtime.outbox.pending()] == [NOTIFIED_LOW_PRODUCT_QUANTITY]
