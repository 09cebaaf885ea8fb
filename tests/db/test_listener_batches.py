"""A listener applying several deliveries in one transaction: ``Engine.apply``
given several envelopes.

The consumer batches what RabbitMQ has already delivered (see the broker
tier); here the engine is fed envelopes directly, on SQLite and PostgreSQL,
through the real Avro round trip.
"""

from __future__ import annotations

import logging

import pytest

from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from cqrs_warehouse.warehouse.views.products import quantity_of
from tests.db.listening import (
    Retries,
    envelopes,
    event,
    held_positions,
    listener,
    position_of,
    recorder,
    warehouse_handler,
)
from tests.support.services import unique_name

ENGINE_LOGGER = "cqrs_warehouse.messaging.listening.engine"


@pytest.fixture
def engine(runtime):
    return runtime.engine


def increases(engine, sku: str, *positions: int) -> list[dict]:
    return envelopes(engine, *(event(PRODUCT_QUANTITY_INCREASED, sku, 1, p) for p in positions))


def test_a_batch_is_applied_in_stream_order_whatever_order_its_deliveries_came_in(engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = unique_name("sku")
    batch = [
        *increases(engine, sku, 3, 1),
        *increases(engine, other, 1),
        *increases(engine, sku, 2),
    ]
    retries = Retries()

    outcomes = engine.apply(spec, batch, attempt=1, retry_later=retries)

    assert outcomes == [Outcome.APPLIED] * 4  # in the order of the deliveries
    assert sorted(seen) == [1, 1, 2, 3]
    assert [p for p in seen if p > 1] == [2, 3]  # sku's 2 before its 3: nothing was held
    assert (position_of(engine, "rec", sku), position_of(engine, "rec", other)) == (3, 1)
    assert held_positions("rec") == []
    assert retries.asked == []


def test_a_message_delivered_twice_in_one_batch_is_applied_once(engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    [first, second] = increases(engine, sku, 1, 2)

    engine.apply(spec, [first, second, first], attempt=1, retry_later=Retries())

    assert seen == [1, 2]
    assert position_of(engine, "rec", sku) == 2


def test_nothing_of_a_batch_in_which_a_handler_fails_is_kept(runtime, engine, sku):
    # The batch's transaction is undone as a whole; then each message is
    # applied on its own: position 1 once, for good, and 2 sent back.
    view = warehouse_handler(runtime, "view")
    calls: list[int] = []

    def handle(message) -> None:
        calls.append(message.position)
        view.apply(message)
        if message.position == 2:
            raise RuntimeError("refuses position 2")

    spec = listener("rec", handle)
    retries = Retries()

    outcomes = engine.apply(spec, increases(engine, sku, 1, 2), attempt=1, retry_later=retries)

    assert outcomes == [Outcome.APPLIED, Outcome.RETRIED]
    assert calls == [1, 2, 1, 2]  # together (undone), then each alone
    assert quantity_of(sku) == 1  # position 1's write in the batch was undone too
    assert position_of(engine, "rec", sku) == 1
    assert retries.asked == [(2, 1)]


def test_a_batch_of_the_last_attempt_needs_no_retry_later_and_dead_letters(runtime, engine, sku):
    spec = recorder("rec", [], fail_on={2}, attempts=5)
    outcomes = engine.apply(spec, increases(engine, sku, 1, 2), attempt=1, final=True)
    assert outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("rec")
    assert letter.position == 2


def test_one_failing_message_is_retried_alone_and_the_rest_of_its_batch_is_applied(
    runtime, engine, sku
):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2}, attempts=3)
    other = unique_name("sku")
    retries = Retries()

    engine.apply(
        spec,
        [*increases(engine, sku, 1, 2, 3), *increases(engine, other, 1)],
        attempt=1,
        retry_later=retries,
    )

    assert retries.asked == [(2, 1)]  # position 2, after its first attempt
    assert position_of(engine, "rec", sku) == 1 and position_of(engine, "rec", other) == 1
    assert held_positions("rec") == [3]  # waits for 2, as it would one at a time
    assert runtime.dead_letters.list("rec") == []

    # The retry comes back alone (as a one-envelope message) and succeeds:
    # it releases position 3.
    healed: list[int] = []
    [retry] = increases(engine, sku, 2)
    engine.apply(recorder("rec", healed), [retry], attempt=2, retry_later=retries)
    assert healed == [2, 3]
    assert position_of(engine, "rec", sku) == 3 and held_positions("rec") == []


def test_every_line_about_a_failed_batch_names_one_of_its_messages(engine, sku, caplog):
    spec = recorder("rec", [], fail_on={2}, attempts=3)
    caplog.handler.addFilter(context.ContextFilter())  # as the service's log handlers do

    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        engine.apply(spec, increases(engine, sku, 1, 2, 3), attempt=1, retry_later=Retries())

    lines = [r for r in caplog.records if r.name == ENGINE_LOGGER]
    failed = [r for r in lines if "a batch of 3 failed" in r.getMessage()]
    assert len(failed) == 3
    assert all(r.message_id and r.message_type and r.listener == "rec" for r in lines), [
        r.getMessage() for r in lines if not getattr(r, "message_id", None)
    ]


def test_at_its_last_attempt_a_failing_message_of_a_batch_is_dead_lettered(runtime, engine, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2}, attempts=2)
    other = unique_name("sku")
    retries = Retries()
    applied, failing = increases(engine, sku, 1, 2)

    engine.apply(
        spec, [failing, applied, *increases(engine, other, 1)], attempt=2, retry_later=retries
    )

    assert retries.asked == []
    [letter] = runtime.dead_letters.list("rec")
    assert (letter.message_id, letter.attempts, letter.poison) == (failing["id"], 2, 0)
    assert position_of(engine, "rec", sku) == 1 and position_of(engine, "rec", other) == 1


def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_others_are_applied(
    runtime, engine, sku
):
    seen: list[int] = []
    spec = recorder("rec", seen)
    other = unique_name("sku")
    [poison] = increases(engine, other, 1)
    poison = engine.keys.signed({**poison, "payload": "AAAA"})  # not an Increased record

    outcomes = engine.apply(
        spec, [*increases(engine, sku, 1, 2), poison], attempt=1, retry_later=Retries()
    )

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.DEAD_LETTERED]
    assert seen == [1, 2]
    [letter] = runtime.dead_letters.list("rec")
    assert (letter.message_id, letter.poison) == (poison["id"], 1)


def test_a_batch_logs_one_line_at_info_and_a_line_per_delivery_at_debug(engine, sku, caplog):
    seen: list[int] = []
    spec = recorder("rec", seen)
    [first, second, third] = increases(engine, sku, 1, 2, 3)

    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        engine.apply(spec, [first, second, first], attempt=1, retry_later=Retries())
    assert [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER] == [
        "listener rec: 3 delivered: 2 applied, 1 duplicate (attempt 1)"
    ]

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=ENGINE_LOGGER):
        engine.apply(spec, [third], attempt=2)
    lines = [r for r in caplog.records if r.name == ENGINE_LOGGER]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        ("DEBUG", "listener rec: applied (attempt 2)"),
        ("INFO", "listener rec: 1 delivered: 1 applied (attempt 2)"),
    ]
    assert all(r.message_id and r.listener == "rec" for r in lines)
