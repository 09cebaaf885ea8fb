"""The transactional outbox on SQLite and PostgreSQL: appends only inside a
transaction, commit and roll back with the state change, validate on write."""

import uuid

import psycopg2
import pytest

from cqrs_warehouse.messaging.errors import (
    NotInTransactionError,
    OutboxError,
    PayloadValidationError,
    StorageError,
    TransientStorageError,
    UnknownSchemaError,
)
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import Outbox
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.messaging.storage.outbox import OutboxRow, notified_id, notified_row
from cqrs_warehouse.messaging.testing import eventually
from cqrs_warehouse.warehouse.commands import Commands, ProductStock
from cqrs_warehouse.warehouse.errors import InsufficientQuantityOnHandError
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED


class Boom(Exception):
    pass


def increased_message(sku, quantity=5, **fields):
    return Message(
        type=PRODUCT_QUANTITY_INCREASED,
        schema_version=1,
        payload={"sku": sku, "quantity": quantity},
        **fields,
    )


def essence(message):
    """What the caller of append gave: the outbox may add routing details of its own."""
    return (
        message.id,
        message.type,
        message.schema_version,
        message.payload,
        message.stream,
        message.position,
    )


def on_hand(sku):
    row = ProductStock.get_or_none(ProductStock.sku == sku)
    return None if row is None else row.quantity


@pytest.fixture
def outbox(runtime):
    return runtime.outbox


# --- transactions -----------------------------------------------------------


def test_append_outside_a_transaction_is_refused_and_stores_nothing(outbox, sku):
    with pytest.raises(NotInTransactionError):
        outbox.append(increased_message(sku))
    assert OutboxRecord.select().count() == 0


def test_not_in_transaction_is_an_outbox_error():
    assert issubclass(NotInTransactionError, OutboxError)


def test_append_inside_a_transaction_stores_the_message(outbox, sku):
    message = increased_message(sku, 7, stream=sku, position=1)
    with outbox.transaction():
        outbox.append(message)
    assert [essence(m) for m in outbox.pending()] == [essence(message)]


def test_appends_are_pending_in_append_order(outbox, sku):
    messages = [increased_message(sku, quantity) for quantity in (3, 1, 2)]
    with outbox.transaction():
        for message in messages:
            outbox.append(message)
    assert [essence(m) for m in outbox.pending()] == [essence(m) for m in messages]


def test_exception_after_a_command_rolls_back_its_state_and_its_message(outbox, commands, sku):
    with pytest.raises(Boom), outbox.transaction():
        commands.increase_product_quantity(sku, 5)
        raise Boom
    assert outbox.pending() == []
    assert on_hand(sku) is None


def test_exception_after_a_ship_rolls_back_to_the_earlier_committed_state(outbox, commands, sku):
    commands.increase_product_quantity(sku, 10)
    committed = outbox.pending()
    with pytest.raises(Boom), outbox.transaction():
        commands.ship_product_quantity(sku, 4)
        commands.increase_product_quantity(sku, 1)
        raise Boom
    assert on_hand(sku) == 10
    assert outbox.pending() == committed


def test_commands_in_one_transaction_commit_together(outbox, commands, sku):
    with outbox.transaction():
        commands.increase_product_quantity(sku, 10)
        commands.ship_product_quantity(sku, 4)
    assert on_hand(sku) == 6
    assert [m.type for m in outbox.pending()] == [
        PRODUCT_QUANTITY_INCREASED,
        PRODUCT_QUANTITY_SHIPPED,
    ]


def test_failed_command_inside_a_transaction_rolls_back_the_earlier_command(outbox, commands, sku):
    with pytest.raises(InsufficientQuantityOnHandError), outbox.transaction():
        commands.increase_product_quantity(sku, 10)
        commands.ship_product_quantity(sku, 11)
    assert on_hand(sku) is None
    assert outbox.pending() == []


# --- validation on write ----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [{"sku": "x"}, {"sku": "x", "quantity": "5"}, {"sku": "x", "quantity": 5, "extra": 1}],
    ids=["missing-field", "wrong-type", "extra-field"],
)
def test_payload_that_fails_its_schema_is_refused_and_stores_nothing(outbox, payload):
    message = Message(type=PRODUCT_QUANTITY_INCREASED, schema_version=1, payload=payload)
    with pytest.raises(PayloadValidationError), outbox.transaction():
        outbox.append(message)
    assert OutboxRecord.select().count() == 0


def test_refused_payload_rolls_back_the_whole_transaction(outbox, commands, sku):
    bad = Message(type=PRODUCT_QUANTITY_INCREASED, schema_version=1, payload={"sku": sku})
    with pytest.raises(PayloadValidationError), outbox.transaction():
        commands.increase_product_quantity(sku, 5)
        outbox.append(bad)
    assert OutboxRecord.select().count() == 0
    assert on_hand(sku) is None


def test_message_of_unknown_type_is_refused_and_stores_nothing(outbox, sku):
    message = Message(type="Warehouse.Events.Nope", schema_version=1, payload={"sku": sku})
    with pytest.raises(UnknownSchemaError), outbox.transaction():
        outbox.append(message)
    assert OutboxRecord.select().count() == 0


def test_a_stream_message_needs_a_position_of_at_least_one(outbox, sku):
    with pytest.raises(OutboxError, match="no position"), outbox.transaction():
        outbox.append(increased_message(sku, stream=sku, position=0))
    assert OutboxRecord.select().count() == 0


def test_payload_is_stored_as_plain_avro_binary(outbox, sku):
    with outbox.transaction():
        outbox.append(increased_message("abc123", 50))
    [record] = OutboxRecord.select()
    assert bytes(record.payload) == b"\x0cabc123\x64"
    assert (record.type, record.schema_version) == (PRODUCT_QUANTITY_INCREASED, 1)


def test_status_counts_what_waits_and_the_age_of_the_oldest(outbox, commands, sku):
    assert outbox.status() == (0, None)
    commands.increase_product_quantity(sku, 1)
    commands.increase_product_quantity(sku, 1)
    count, age = outbox.status()
    assert count == 2
    assert age is not None and age >= 0


# --- message ids ------------------------------------------------------------


def test_message_ids_are_unique_uuids(outbox, commands, sku):
    commands.increase_product_quantity(sku, 10)
    commands.ship_product_quantity(sku, 1)
    commands.increase_product_quantity(f"{sku}-b", 1)
    ids = [m.id for m in outbox.pending()]
    assert len(set(ids)) == 3
    assert all(str(uuid.UUID(message_id)) == message_id for message_id in ids)


def test_message_id_in_the_outbox_is_the_one_the_command_returned(outbox, commands, sku):
    returned = [
        commands.increase_product_quantity(sku, 10).id,
        commands.ship_product_quantity(sku, 2).id,
    ]
    assert [m.id for m in outbox.pending()] == returned
    assert [m.id for m in outbox.pending()] == returned  # reading again changes nothing


def test_appending_the_same_message_id_twice_is_refused(outbox, sku):
    message = increased_message(sku)
    with outbox.transaction():
        outbox.append(message)
    # A constraint the database refuses: a storage error, and not one that passes.
    with pytest.raises(StorageError) as refused, outbox.transaction():
        outbox.append(message)
    assert not isinstance(refused.value, TransientStorageError)
    assert [essence(m) for m in outbox.pending()] == [essence(message)]


# --- waking the drain -------------------------------------------------------


def is_postgres(runtime):
    return runtime.database.has_schemas


@pytest.fixture
def nudged(runtime):
    """Commands on an outbox whose wake-ups of the drain are counted (only where
    the store does not wake it itself: SQLite), and the count."""
    calls = []
    outbox = Outbox(
        runtime.database,
        runtime.storage.outbox,
        runtime.registry,
        wake_drain=lambda: calls.append(1),
    )
    return Commands(outbox), outbox, calls


@pytest.fixture
def notifications(runtime):
    """On PostgreSQL, a connection listening on the runtime's outbox channel; None on SQLite."""
    if not is_postgres(runtime):
        yield None
        return
    listener = psycopg2.connect(runtime.settings.database_url)
    listener.autocommit = True
    with listener.cursor() as cursor:
        cursor.execute(f'LISTEN "{runtime.settings.notify_channel}"')
    yield listener
    listener.close()


def received_notifications(listener):
    """Wait for the first NOTIFY, then every one received so far."""

    def arrived():
        listener.poll()
        assert listener.notifies, "no NOTIFY yet"

    eventually(arrived)
    listener.poll()
    return [(n.channel, n.payload) for n in listener.notifies]


def stored_rows() -> list[OutboxRow]:
    """The outbox's rows as the drain takes them, oldest first."""
    query = OutboxRecord.select(*[getattr(OutboxRecord, f) for f in OutboxRow._fields])
    rows = [OutboxRow(*row) for row in query.order_by(OutboxRecord.id).tuples()]
    return [row._replace(payload=bytes(row.payload)) for row in rows]


def test_commit_that_appended_wakes_the_drain_once_per_row_with_the_row(
    runtime, nudged, notifications, sku
):
    commands, outbox, nudges = nudged
    with pytest.raises(Boom), outbox.transaction():
        commands.increase_product_quantity(sku, 1)
        raise Boom
    with outbox.transaction():
        pass
    with outbox.transaction():
        commands.increase_product_quantity(sku, 1)
        commands.increase_product_quantity(sku, 1)
    if is_postgres(runtime):
        # NOTIFY inside the transaction: delivered only by the commit, with
        # each row it appended (which the leading drain publishes as it is).
        channel = runtime.settings.notify_channel
        rows = stored_rows()
        assert len(rows) == 2
        received = received_notifications(notifications)
        assert [c for c, _ in received] == [channel, channel]
        assert [notified_row(payload) for _, payload in received] == rows
        assert [notified_id(payload) for _, payload in received] == [row.id for row in rows]
        assert nudges == []  # the store wakes the drain: the outbox sends nothing
    else:
        assert nudges == [1]


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_row_too_long_for_a_notification_is_notified_by_its_id(
    runtime, outbox, notifications, sku
):
    # A payload of 6,000 bytes is 8,000 characters of base64: over NOTIFY's limit.
    with outbox.transaction():
        outbox.append(increased_message(sku + "x" * 6000))
    [row] = stored_rows()
    [(_, payload)] = received_notifications(notifications)
    assert payload == str(row.id)
    assert notified_row(payload) is None
    assert notified_id(payload) == row.id


def test_a_notification_that_names_no_row_is_read_as_none():
    assert notified_row("") is None and notified_id("") is None
    assert notified_row("[1, 2]") is None and notified_id("[1, 2]") is None
    assert notified_row("[not json") is None and notified_id("x") is None


def test_transaction_that_rolled_back_or_appended_nothing_does_not_nudge(nudged, sku):
    commands, outbox, nudges = nudged
    with pytest.raises(Boom), outbox.transaction():
        commands.increase_product_quantity(sku, 1)
        raise Boom
    with outbox.transaction():
        pass
    assert nudges == []


def test_failing_nudge_does_not_undo_the_committed_command(runtime, sku):
    def nudge():
        raise ConnectionError("broker down")

    outbox = Outbox(runtime.database, runtime.storage.outbox, runtime.registry, wake_drain=nudge)
    Commands(outbox).increase_product_quantity(sku, 3)
    assert on_hand(sku) == 3
    assert len(outbox.pending()) == 1
