"""Set-based listening: the messages of a batch that are next in their streams
are claimed together (``Positions.claim_runs``) and handed to the handler's
``apply_batch`` in one call; the warehouse's batch handlers have exactly the
effect of their one-message ``apply``. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.handler import Handler
from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.messaging.storage.positions import Run
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.views import products
from tests.db.listening import (
    Retries,
    apply,
    delivered,
    effect_on,
    envelopes,
    event,
    held_positions,
    listener,
    position_of,
    record_queries,
    warehouse_listener,
)
from tests.support.services import unique_name


class Calls(Handler):
    """A handler with a batch form, recording what each of its forms got."""

    def __init__(self) -> None:
        self.one: list[tuple[str, int]] = []  # (stream, position) per single call
        self.batches: list[list[tuple[str, int]]] = []

    def apply(self, message: Message) -> None:
        self.one.append((message.stream, message.position))

    def apply_batch(self, messages: Sequence[Message]) -> None:
        self.batches.append([(m.stream, m.position) for m in messages])


def batched(name: str = "batched") -> tuple[Calls, object]:
    calls = Calls()
    return calls, listener(name, calls)


@pytest.fixture
def engine(runtime):
    return runtime.engine


def increases(sku: str, *positions: int) -> list[Message]:
    return [event(PRODUCT_QUANTITY_INCREASED, sku, 1, p) for p in positions]


def test_the_next_messages_of_each_stream_go_to_the_batch_handler_in_one_call(engine, sku):
    calls, spec = batched()
    other, later = unique_name("sku"), unique_name("sku")

    outcomes = apply(
        engine, spec, *increases(sku, 1, 2, 3), *increases(other, 1), *increases(later, 2)
    )

    assert calls.batches == [sorted([(sku, 1), (sku, 2), (sku, 3), (other, 1)])]
    assert calls.one == []  # later's 2 waits for its 1: held, not handled
    assert held_positions("batched") == [2]
    assert (position_of(engine, "batched", sku), position_of(engine, "batched", other)) == (3, 1)
    assert sorted(outcomes) == sorted([Outcome.APPLIED] * 4 + [Outcome.HELD])


def test_after_a_gap_the_rest_of_a_stream_waits_and_the_gap_releases_it(engine, sku):
    calls, spec = batched()

    apply(engine, spec, *increases(sku, 1, 2, 4, 5))

    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert held_positions("batched") == [4, 5]
    assert apply(engine, spec, *increases(sku, 3)) == [Outcome.APPLIED]
    assert calls.one == [(sku, 3), (sku, 4), (sku, 5)]  # 3 alone, then what it released
    assert position_of(engine, "batched", sku) == 5 and held_positions("batched") == []


def test_messages_already_applied_are_duplicates_and_not_handled_again(engine, sku):
    calls, spec = batched()
    apply(engine, spec, *increases(sku, 1, 2))

    again = apply(engine, spec, *increases(sku, 1, 2, 3))

    assert again == [Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.APPLIED]
    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert calls.one == [(sku, 3)]  # after the duplicate, the stream went one at a time
    assert position_of(engine, "batched", sku) == 3


def test_a_run_whose_stream_holds_its_successor_releases_it_in_the_same_transaction(engine, sku):
    calls, spec = batched()
    assert apply(engine, spec, *increases(sku, 3)) == [Outcome.HELD]

    apply(engine, spec, *increases(sku, 1, 2))

    assert calls.batches == [[(sku, 1), (sku, 2)]]
    assert calls.one == [(sku, 3)]
    assert position_of(engine, "batched", sku) == 3 and held_positions("batched") == []


def test_a_listener_without_a_batch_handler_gets_each_message_under_its_correlation_id(engine, sku):
    seen: list[tuple[int, str | None]] = []

    def handle(message: Message) -> None:
        seen.append((message.position, context.correlation_id.get()))

    spec = listener("plain", handle)
    batch = [
        delivered(engine, message, correlation_id=f"request-{number}")
        for number, message in enumerate(increases(sku, 1, 2))
    ]

    engine.apply(spec, batch, attempt=1, retry_later=Retries())

    assert seen == [(1, "request-0"), (2, "request-1")]


def test_claim_runs_takes_the_runs_that_are_next_and_reports_held_counts(runtime, engine, sku):
    positions = runtime.storage.positions
    fresh, waiting, behind, holding = (f"{sku}-{n}" for n in range(4))
    with runtime.database.atomic():
        positions.claim_runs("l", [Run(behind, 0, 1, 3), Run(holding, 0, 1, 1)])
    with runtime.database.atomic():
        positions.set("l", holding, 1, 2)  # holds 2 messages

    with runtime.database.atomic():
        claimed = positions.claim_runs(
            "l",
            [
                Run(fresh, 0, 1, 2),  # a new stream from its start
                Run(waiting, 1, 2, 2),  # a new stream, but its position 1 is missing
                Run(behind, 2, 3, 4),  # 3 is applied already: not next
                Run(holding, 1, 2, 5),
            ],
        )

    assert claimed == {fresh: 0, holding: 2}
    assert position_of(engine, "l", fresh) == 2 and position_of(engine, "l", holding) == 5
    assert position_of(engine, "l", behind) == 3
    assert position_of(engine, "l", waiting) in (None, 0)  # nothing applied there


THRESHOLD = 5  # the notifier's (LOW_QUANTITY_THRESHOLD's default)


def changes(sku: str) -> list[Message]:
    """Increases and shipments of one SKU that go below the threshold and back, twice."""
    kinds_and_quantities = [
        (PRODUCT_QUANTITY_INCREASED, THRESHOLD + 3),
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


def with_correlation_ids(engine, messages: list[Message], prefix: str) -> list[dict]:
    return [
        delivered(engine, message, correlation_id=f"{prefix}-{message.position}")
        for message in messages
    ]


def notifications(registry, sku: str) -> list[str | None]:
    """The correlation ids of the notifications of ``sku`` in the outbox, in the
    order they were written."""
    records = OutboxRecord.select().where(OutboxRecord.type == NOTIFIED_LOW_PRODUCT_QUANTITY)
    found = []
    for record in records.order_by(OutboxRecord.id):
        payload = registry.decode(record.type, record.schema_version, bytes(record.payload))
        if payload["sku"] == sku:
            found.append(record.correlation_id)
    return found


@pytest.mark.parametrize("kind", ["view", "notifier", "archive"])
def test_each_warehouse_batch_handler_has_the_effect_of_its_one_message_handler(
    runtime, engine, sku, kind
):
    assert runtime.services["warehouse"].settings.low_quantity_threshold == THRESHOLD
    spec = warehouse_listener(runtime, kind)
    together, alone = f"{sku}-t", f"{sku}-a"
    # Several SKUs in one batch, as a consumer would gather them.
    engine.apply(
        spec,
        with_correlation_ids(engine, changes(together), "t")
        + with_correlation_ids(engine, increases(sku, 1), "x"),
        attempt=1,
        retry_later=Retries(),
    )
    for envelope in with_correlation_ids(engine, changes(alone), "a"):
        engine.apply(spec, [envelope], attempt=1)

    if kind == "view":
        assert products.quantity_of(together) == products.quantity_of(alone) == 0
        assert products.quantity_of(sku) == 1
    elif kind == "notifier":
        assert low_quantity.quantity_of(together) == low_quantity.quantity_of(alone) == 0
        # Notified after positions 3, 4 and 7, in that order, each under its
        # message's correlation id.
        assert notifications(runtime.registry, together) == ["t-3", "t-4", "t-7"]
        assert notifications(runtime.registry, alone) == ["a-3", "a-4", "a-7"]
    else:
        for stream, prefix in ((together, "t"), (alone, "a")):
            rows = ArchivedMessage.select().where(ArchivedMessage.stream == stream)
            assert [
                (row.position, row.correlation_id, bytes(row.payload))
                for row in rows.order_by(ArchivedMessage.id)
            ] == [
                (
                    m.position,
                    f"{prefix}-{m.position}",
                    runtime.registry.encode(m.type, 1, m.payload),
                )
                for m in changes(stream)
            ]


# (SQLite runs one writer at a time: nothing concurrent to check there.)
@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_concurrent_batches_of_one_listener_over_the_same_streams_apply_each_message_once(
    runtime, engine, sku
):
    streams = [f"{sku}-{n:02d}" for n in range(12)]
    spec = warehouse_listener(runtime, "view")
    rounds = 15
    # Both workers get every message (as after a redelivery), in batches of
    # one message per stream: each waits on the other's claims.
    batches = [
        envelopes(engine, *(m for s in streams for m in increases(s, position)))
        for position in range(1, rounds + 1)
    ]
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for batch in batches:
                engine.apply(spec, batch, attempt=1, retry_later=Retries())
        except BaseException as error:  # reported below, on the test's thread
            failures.append(error)
        finally:
            runtime.database.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert [products.quantity_of(s) for s in streams] == [rounds] * len(streams)
    assert [position_of(engine, spec.name, s) for s in streams] == [rounds] * len(streams)


def test_the_archive_keeps_a_batch_whose_columns_are_all_empty_in_places(runtime, engine, sku):
    # First positions (no predecessors) of several streams, and no correlation ids.
    streams = [f"{sku}-{n}" for n in range(3)]
    spec = warehouse_listener(runtime, "archive")

    outcomes = apply(engine, spec, *(m for s in streams for m in increases(s, 1)))

    assert outcomes == [Outcome.APPLIED] * 3
    rows = ArchivedMessage.select().where(ArchivedMessage.stream << streams)
    assert sorted((r.stream, r.position, r.predecessors, r.correlation_id) for r in rows) == [
        (s, 1, None, None) for s in streams
    ]


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("kind", "message_kind", "round_trips"),
    [
        ("view", PRODUCT_QUANTITY_INCREASED, 2),
        ("archive", PRODUCT_QUANTITY_INCREASED, 2),
        ("notifier", PRODUCT_QUANTITY_INCREASED, 2),  # an increase never notifies
        ("notifier", PRODUCT_QUANTITY_SHIPPED, 3),  # the quantity left decides
    ],
)
def test_a_listeners_next_message_is_its_claim_then_its_write_with_the_commit(
    runtime, engine, sku, monkeypatch, kind, message_kind, round_trips
):
    # The usual way, without claiming ahead (tests/db/test_claim_ahead.py):
    # the handler taken as not rollback-safe.
    spec = warehouse_listener(runtime, kind)
    spec.handler.rollback_safe = False
    for position in (1, 2):  # the statements prepared (a stream's first claim is another)
        apply(engine, spec, event(PRODUCT_QUANTITY_INCREASED, sku, 100, position))
    sent = record_queries(monkeypatch)

    assert apply(engine, spec, event(message_kind, sku, 1, 3)) == [Outcome.APPLIED]

    assert len(sent) == round_trips, sent
    assert sent[0].startswith("BEGIN; ") and "messaging_stream_positions" in sent[0]
    assert sent[-1].endswith("COMMIT")
    # The write goes with the COMMIT, unless the handler reads what it returns.
    assert (sent[-1] == "COMMIT") == (round_trips == 3)
    expected = 199 if message_kind == PRODUCT_QUANTITY_SHIPPED else 201
    assert effect_on(kind, sku) == (3 if kind == "archive" else expected)


def test_messages_whose_copies_are_held_are_duplicates_in_a_batch_as_one_at_a_time(engine, sku):
    # Copies of 3 and 2 came first, out of order: both held, waiting for 1.
    calls, spec = batched()
    for copy in increases(sku, 3, 2):
        assert apply(engine, spec, copy) == [Outcome.HELD]
    alone, alone_spec = batched("alone")
    for copy in increases(sku, 3, 2):
        assert apply(engine, alone_spec, copy) == [Outcome.HELD]

    together = apply(engine, spec, *increases(sku, 1, 2, 3, 4))
    one_at_a_time = [apply(engine, alone_spec, m)[0] for m in increases(sku, 1, 2, 3, 4)]

    # 1 releases the held 2 and 3; the delivered 2 and 3 are their duplicates.
    expected = [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.APPLIED]
    assert together == one_at_a_time == expected
    assert calls.batches == [[(sku, 1)]]
    assert calls.one == [(sku, 2), (sku, 3), (sku, 4)]
    assert alone.one == [(sku, 1), (sku, 2), (sku, 3), (sku, 4)]
    assert position_of(engine, "batched", sku) == position_of(engine, "alone", sku) == 4
    assert held_positions("batched") == held_positions("alone") == []


def test_a_run_is_cut_only_at_a_held_copy_of_one_of_its_messages(engine, sku):
    # 5 is held (it waits for 4); the run 1-3 does not reach it and stays whole.
    calls, spec = batched()
    assert apply(engine, spec, *increases(sku, 5)) == [Outcome.HELD]

    outcomes = apply(engine, spec, *increases(sku, 1, 2, 3))

    assert outcomes == [Outcome.APPLIED] * 3
    assert calls.batches == [[(sku, 1), (sku, 2), (sku, 3)]]
    assert position_of(engine, "batched", sku) == 3 and held_positions("batched") == [5]
