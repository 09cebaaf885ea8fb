"""``outbox.after_commit``: what a command or a listener does outside the
database runs once its transaction has committed, and never for one undone.
On SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from cqrs_warehouse.messaging import context, outbox
from cqrs_warehouse.messaging.errors import NotInTransactionError
from cqrs_warehouse.messaging.routing import ListenerSpec
from cqrs_warehouse.messaging.testing import feed, pending_messages
from cqrs_warehouse.warehouse.commands import notify_low_product_quantity
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from tests.conftest import unique_name
from tests.db.test_ordering_and_dead_letters import event


def test_it_runs_once_the_transaction_has_committed(db):
    seen: list[bool] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append(db.in_transaction()))
        assert seen == []
    assert seen == [False]


def test_it_runs_in_the_order_given(db):
    seen: list[int] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append(1))
        with outbox.transaction():
            outbox.after_commit(lambda: seen.append(2))
        outbox.after_commit(lambda: seen.append(3))
    assert seen == [1, 2, 3]


def test_it_never_runs_for_a_transaction_rolled_back(db):
    seen: list[int] = []
    with pytest.raises(RuntimeError), outbox.transaction():
        outbox.after_commit(lambda: seen.append(1))
        raise RuntimeError("undo")
    with outbox.transaction():
        pass
    assert seen == []


def test_what_an_undone_savepoint_gave_is_forgotten_and_the_rest_runs(db):
    seen: list[str] = []
    with outbox.transaction():
        outbox.after_commit(lambda: seen.append("before"))
        with pytest.raises(RuntimeError), outbox.transaction():
            outbox.after_commit(lambda: seen.append("undone"))
            raise RuntimeError("undo the savepoint")
        outbox.after_commit(lambda: seen.append("after"))
    assert seen == ["before", "after"]


def test_outside_a_transaction_it_runs_at_once(db):
    seen: list[int] = []
    outbox.after_commit(lambda: seen.append(1))
    assert seen == [1]


def test_inside_a_transaction_it_cannot_see_commit_it_refuses(db):
    with db.atomic(), pytest.raises(NotInTransactionError, match="after_commit"):
        outbox.after_commit(lambda: None)


def test_a_failing_callback_is_logged_and_the_commit_and_the_others_stand(db, sku, caplog):
    seen: list[int] = []

    def fail() -> None:
        raise RuntimeError("the call out failed")

    with caplog.at_level(logging.ERROR), outbox.transaction():
        notify_low_product_quantity(sku, 1)
        outbox.after_commit(fail)
        outbox.after_commit(lambda: seen.append(1))

    assert seen == [1]
    assert [m.payload for m in pending_messages()] == [{"sku": sku}]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "after the commit failed" in record.getMessage()
    assert record.exc_info is not None and "the call out failed" in str(record.exc_info[1])


def test_it_runs_in_the_context_it_was_given_in(db):
    seen: list[str | None] = []
    with outbox.transaction():
        with context.bound(correlation_id="request-7"):
            outbox.after_commit(lambda: seen.append(context.correlation_id.get()))
        with context.bound(correlation_id="request-8"):
            pass
    assert seen == ["request-7"]


def test_the_notifiers_warning_comes_after_its_commit_and_not_for_an_undone_run(db, sku, caplog):
    calls: list[int] = []

    def notify_then_fail(message):
        low_quantity.handle_message(message)
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("after notifying")

    spec = ListenerSpec(
        name=unique_name("notifier"), handler_path="", handler=notify_then_fail, bindings=("#",)
    )
    feed(low_quantity.handle_message, event(PRODUCT_QUANTITY_INCREASED, sku, 3, 1))
    shipped = event(PRODUCT_QUANTITY_SHIPPED, sku, 1, 1)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(RuntimeError):
            feed(spec, shipped)
        assert [r for r in caplog.records if sku in r.getMessage()] == []

        feed(spec, shipped)  # its retry

    [record] = [r for r in caplog.records if sku in r.getMessage()]
    assert record.getMessage() == f"Low quantity of product {sku}: 2 remaining"
    assert low_quantity.quantity_of(sku) == 2
    assert [m.type for m in pending_messages()] == [NOTIFIED_LOW_PRODUCT_QUANTITY]
