"""Fault cases: deliveries the service did not publish itself (copies of delivered
messages, a stream's events in reverse order, poison messages), published
straight to RabbitMQ by the test (tests/faults/injection.py) under load.

Each ends with the same checks (tests/faults/checks.py) and adds a row to the
report.
"""

from __future__ import annotations

import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.storage.models import OutboxRecord, ProcessedMessage, StreamPosition
from tests.faults.cases import (
    CLIENTS,
    PAUSE,
    CaseReportFactory,
    finish,
    skus_for,
    start_load,
    wait_for_part_of,
)
from tests.faults.checks import INCREASED, NOTIFIED, SHIPPED, assert_converged, read_state
from tests.faults.conftest import StartInstallation
from tests.faults.injection import Publisher, copy_of, poison, record_from_archive
from tests.faults.installation import LockedRows
from tests.faults.load import Client, Command, Load, plan
from tests.slices.recorders import WatchedMessage
from tests.support.services import unique_name
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults


# --- duplicated and reordered deliveries -------------------------------------------


def test_duplicated_and_reordered_deliveries_are_applied_once_in_stream_order(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "duplicates + reordering",
        "copies of delivered messages published again (to the exchange, and straight to the "
        "view's and the notifier's queues in reverse order); one SKU's events published in "
        "reverse order while its outbox rows are held back from the drain",
    )
    installation = start_installation("dup_reorder")
    skus = skus_for("dr", 3)
    reversed_sku = unique_name("dr-rev")
    client = Client(installation.base_url)
    Load(client, plan(skus, 120, seed=6), clients=CLIENTS).start().join()
    assert_converged(
        installation, skus=skus, attempts=client.snapshot(), listeners=installation.listener_names
    )

    # Copies of every message already delivered about these SKUs, notifications included.
    with installation.reading():
        delivered = [
            record_from_archive(row)
            for row in ArchivedMessage.select().order_by(ArchivedMessage.id)
            if row.stream in skus or (row.type == NOTIFIED and row.stream is None)
        ]
    first_sku = [r for r in delivered if r.stream == skus[0]]
    second_sku = [r for r in delivered if r.stream == skus[1]]
    with Publisher(installation.exchange) as publisher:
        publisher.records(delivered)
        publisher.records(reversed(first_sku), queue=installation.queue("products_view"))
        publisher.records(
            reversed(second_sku), queue=installation.queue("low_product_quantity_notifier")
        )
        injected = publisher.sent
    expected_duplicates = (
        len(delivered) * len(installation.listener_names) + len(first_sku) + len(second_sku)
    )

    # One SKU's events, published in reverse order before the drain publishes them.
    installation.stop_workers()
    for action, quantity in (
        ("increase", 10),
        ("ship", 4),
        ("ship", 2),
        ("increase", 3),
        ("ship", 3),
        ("ship", 4),
    ):
        attempt = client.send(Command(reversed_sku, action, quantity))
        assert attempt.status == 200, attempt.body
    listeners = installation.listener_names
    rows = (
        OutboxRecord.select()
        .where(OutboxRecord.stream == reversed_sku)
        .order_by(OutboxRecord.position)
    )
    # The drain takes with SKIP LOCKED: it publishes everything but these rows meanwhile.
    with LockedRows(installation, rows) as locked:
        events = [copy_of(row) for row in locked.rows]
        assert [r.position for r in events] == [1, 2, 3, 4, 5, 6]
        installation.start_fault_workers()
        later = events[1:]
        with Publisher(installation.exchange) as publisher:
            publisher.records([later[-1], *reversed(later)])  # the last one twice
            injected += publisher.sent

        def all_held() -> None:
            state = read_state(installation)
            held = sorted((name, p) for name, s, p in state.held if s == reversed_sku)
            assert held == sorted((name, p) for name in listeners for p in range(2, 7)), held

        eventually(all_held, timeout=60, interval=0.1)
        # The rest of the load goes on meanwhile; then the drain gets the rows.
        load = Load(client, plan(skus, 60, seed=66), clients=CLIENTS, pause=PAUSE).start()
    load.join()
    # Each listener holds the 6 reversed copies, then gets the drain's 1 to 6: the 1 is
    # applied with everything held, and each of 2 to 6 is a duplicate, or held again and
    # dropped if it came in before the 1 was applied.
    reversed_and_drained = (len(later) + 1 + len(later)) * len(listeners)

    report.injected = injected
    finish(
        installation,
        report,
        client,
        [*skus, reversed_sku],
        at_least={
            "duplicate": expected_duplicates,
            "duplicate+held": expected_duplicates + reversed_and_drained,
        },
    )

    # Each message keeps its own correlation id (the request's X-Request-ID) wherever it
    # goes, the archive included, and a notification carries its shipment's: the
    # shipments of 2, 3 and 4 left the SKU at 4, 4 and 0.
    state = read_state(installation)
    mine = [a for a in client.snapshot() if a.command.sku == reversed_sku]
    request_of = {a.body["message_id"]: a.request_id for a in mine}
    wrong = [
        (e.position, e.correlation_id, request_of.get(e.message_id))
        for e in state.events
        if e.stream == reversed_sku and e.correlation_id != request_of.get(e.message_id)
    ]
    notified = sorted(
        str(e.correlation_id)
        for e in state.events
        if e.type == NOTIFIED and e.payload["sku"] == reversed_sku
    )
    low_shipments = sorted(a.request_id for a in mine[2:3] + mine[4:6])
    report.notes.append(
        f"{reversed_sku}: {len(wrong)} of its 6 events archived with another request's "
        f"correlation id; notifications carry {notified}, its low shipments are {low_shipments}"
    )
    assert not wrong and notified == low_shipments, (
        "messages applied after being held (and what their handlers emit) take the "
        "correlation id of the message that released them, not their own: (position, "
        f"archived, own) {wrong}; notifications {notified} != shipments {low_shipments}"
    )


# --- poison messages ------------------------------------------------------------------


def test_poison_messages_are_dead_lettered_at_once_and_block_no_other_sku(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "poison messages",
        "published to the exchange under load: undecodable Avro, unknown type, unknown "
        "version, another schema's payload, bytes after the record, invalid UTF-8, a bad "
        "stream position, and undecodable ones claiming a stream (their own, and a loaded "
        "SKU's)",
    )
    installation = start_installation("poison")
    skus = skus_for("po")
    registry = installation.runtime.registry
    good = registry.encode(INCREASED, 1, {"sku": skus[0], "quantity": 3})
    other = registry.encode(NOTIFIED, 1, {"sku": skus[0]})
    own_stream = unique_name("po-own")
    poisons = [
        poison("undecodable Avro", message_type=INCREASED, version=1, body=b"\xff" * 11),
        poison("unknown type", message_type=f"{INCREASED}Twice", version=1, body=good),
        poison("unknown version", message_type=INCREASED, version=99, body=good),
        poison("another schema's payload", message_type=SHIPPED, version=1, body=other),
        poison("bytes after the record", message_type=INCREASED, version=1, body=good + b"\0"),
        poison("invalid UTF-8", message_type=INCREASED, version=1, body=b"\x04\xff\xfe\x06"),
        poison(
            "position 0", message_type=SHIPPED, version=1, body=good, stream=skus[1], position=0
        ),
        poison(
            "undecodable, own stream",
            message_type=SHIPPED,
            version=1,
            body=b"\x80",
            stream=own_stream,
            position=1,
        ),
        poison(
            "undecodable, a loaded SKU's stream",
            message_type=INCREASED,
            version=1,
            body=b"\x80",
            stream=skus[2],
            position=3,
        ),
    ]
    client, load = start_load(installation, skus, seed=7)
    try:
        wait_for_part_of(load)
        with Publisher(installation.exchange) as publisher:
            report.injected = publisher.poison(poisons)
    finally:
        load.join()
    listeners = installation.listener_names
    expected = {(listener, p.message_id) for listener in listeners for p in poisons}
    finish(installation, report, client, skus, expected_dead_letters=expected)

    ids = {p.message_id for p in poisons}
    with installation.reading():
        letters = list(DeadLetter.select().where(DeadLetter.message_id.in_(ids)))
        assert {(d.poison, d.attempts) for d in letters} == {(1, 1)}, [
            (d.listener, d.message_id, d.poison, d.attempts, d.error) for d in letters
        ]
        # None reached a handler: no listener recorded or applied any of them.
        assert not list(WatchedMessage.select().where(WatchedMessage.message_id.in_(ids)))
        assert not list(ArchivedMessage.select().where(ArchivedMessage.message_id.in_(ids)))
        assert not list(ProcessedMessage.select().where(ProcessedMessage.message_id.in_(ids)))
        assert not list(
            StreamPosition.select().where(
                (StreamPosition.stream == own_stream) & (StreamPosition.position > 0)
            )
        )
    report.notes.append(f"{len(letters)} dead letters, poison=1 and attempts=1 each")
