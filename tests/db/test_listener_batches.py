"""A listener applying several deliveries in one transaction (run_listener_batch).

The consumer batches what RabbitMQ has already delivered (see
tests/integration/test_listener_batches.py); here the batch runner is fed
envelopes directly, on SQLite and PostgreSQL, through the real Avro round trip.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cqrs_warehouse.messaging import context, dead_letters, listener_state
from cqrs_warehouse.messaging.listeners import Outcome, apply_messages, run_listener_batch
from cqrs_warehouse.messaging.testing import round_trip
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from tests.conftest import unique_name
from tests.db.test_ordering_and_dead_letters import REGISTRY, envelope_of, event, recorder


class Retries:
    """Stands in for the actor's retry_later: what it was asked to retry."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []  # (position, attempt)

    def __call__(self, envelope: dict[str, Any], attempt: int) -> None:
        self.asked.append((envelope["position"], attempt))


def increases(sku: str, *positions: int) -> list[dict[str, Any]]:
    return [envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, p)) for p in positions]


def position_of(listener: str, stream: str) -> int | None:
    row = listener_state.StreamPosition.get_or_none(
        (listener_state.StreamPosition.listener == listener)
        & (listener_state.StreamPosition.stream == stream)
    )
    return None if row is None else row.position


def held_positions(listener: str) -> list[int]:
    query = listener_state.HeldMessage.select().where(
        listener_state.HeldMessage.listener == listener
    )
    return sorted(row.position for row in query)


def test_a_batch_is_applied_in_stream_order_whatever_order_its_deliveries_came_in(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = unique_name("sku")
    batch = (*increases(sku, 3, 1), *increases(other, 1), *increases(sku, 2))
    retries = Retries()

    run_listener_batch(spec, batch, REGISTRY, attempt=1, retry_later=retries)

    assert sorted(seen) == [1, 1, 2, 3]
    assert [p for p in seen if p > 1] == [2, 3]  # sku's 2 before its 3: nothing was held
    assert (position_of("rec", sku), position_of("rec", other)) == (3, 1)
    assert held_positions("rec") == []
    assert retries.asked == []


def test_a_message_delivered_twice_in_one_batch_is_applied_once(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    [first, second] = increases(sku, 1, 2)

    run_listener_batch(spec, (first, second, first), REGISTRY, attempt=1, retry_later=Retries())

    assert seen == [1, 2]
    assert position_of("rec", sku) == 2


def test_apply_messages_keeps_nothing_of_a_batch_in_which_a_handler_fails(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2})
    messages = [round_trip(event(PRODUCT_QUANTITY_INCREASED, sku, 1, p)) for p in (1, 2)]

    with pytest.raises(RuntimeError, match="refuses position 2"):
        apply_messages(spec, messages, REGISTRY)

    assert position_of("rec", sku) is None  # position 1's transaction was undone too
    assert apply_messages(recorder("rec", []), messages, REGISTRY) == [Outcome.APPLIED] * 2


def test_one_failing_message_is_retried_alone_and_the_rest_of_its_batch_is_applied(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2}, attempts=3)
    other = unique_name("sku")
    retries = Retries()

    run_listener_batch(
        spec,
        (*increases(sku, 1, 2, 3), *increases(other, 1)),
        REGISTRY,
        attempt=1,
        retry_later=retries,
    )

    assert retries.asked == [(2, 1)]  # position 2, after its first attempt
    assert position_of("rec", sku) == 1 and position_of("rec", other) == 1
    assert held_positions("rec") == [3]  # waits for 2, as it would one at a time
    assert dead_letters.list_letters("rec") == []

    # The retry comes back alone (as a one-envelope message) and succeeds:
    # it releases position 3.
    healed: list[int] = []
    [retry] = increases(sku, 2)
    run_listener_batch(recorder("rec", healed), (retry,), REGISTRY, attempt=2, retry_later=retries)
    assert healed == [2, 3]
    assert position_of("rec", sku) == 3 and held_positions("rec") == []


def test_every_line_about_a_failed_batch_names_one_of_its_messages(db, sku, caplog):
    spec = recorder("rec", [], fail_on={2}, attempts=3)
    caplog.handler.addFilter(context.ContextFilter())  # as the service's log handlers do

    with caplog.at_level(logging.INFO, logger="cqrs_warehouse.messaging.listeners"):
        run_listener_batch(
            spec, tuple(increases(sku, 1, 2, 3)), REGISTRY, attempt=1, retry_later=Retries()
        )

    lines = [r for r in caplog.records if r.name == "cqrs_warehouse.messaging.listeners"]
    failed = [r for r in lines if "a batch of 3 failed" in r.getMessage()]
    assert len(failed) == 3
    assert all(r.message_id and r.message_type and r.listener == "rec" for r in lines), [
        r.getMessage() for r in lines if not getattr(r, "message_id", None)
    ]


def test_at_its_last_attempt_a_failing_message_of_a_batch_is_dead_lettered(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2}, attempts=2)
    other = unique_name("sku")
    retries = Retries()
    applied, failing = increases(sku, 1, 2)

    run_listener_batch(
        spec, (failing, applied, *increases(other, 1)), REGISTRY, attempt=2, retry_later=retries
    )

    assert retries.asked == []
    [letter] = dead_letters.list_letters("rec")
    assert (letter.message_id, letter.attempts, letter.poison) == (failing["id"], 2, 0)
    assert position_of("rec", sku) == 1 and position_of("rec", other) == 1


def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_others_are_applied(db, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = unique_name("sku")
    [poison] = increases(other, 1)
    poison["payload"] = "AAAA"  # not an Increased record

    run_listener_batch(
        spec, (*increases(sku, 1, 2), poison), REGISTRY, attempt=1, retry_later=Retries()
    )

    assert seen == [1, 2]
    [letter] = dead_letters.list_letters("rec")
    assert (letter.message_id, letter.poison) == (poison["id"], 1)
