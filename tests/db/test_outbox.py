"""The transactional outbox on SQLite and PostgreSQL: appends only inside a
transaction, commit and roll back with the state change, validate on write."""

import uuid

import peewee
import psycopg2
import pytest

from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.database import is_postgres
from cqrs_warehouse.messaging.errors import (
    ConfigurationError,
    NotInTransactionError,
    OutboxError,
    PayloadValidationError,
    UnknownSchemaError,
)
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import Outbox, OutboxRecord
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.testing import eventually, pending_messages
from cqrs_warehouse.warehouse.commands import (
    ProductStock,
    increase_product_quantity,
    ship_product_quantity,
)
from cqrs_warehouse.warehouse.errors import InsufficientQuantityOnHandError
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED
from tests.conftest import SCHEMAS, postgres_url, unique_name


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


# --- transactions -----------------------------------------------------------


def test_append_outside_a_transaction_is_refused_and_stores_nothing(db, sku):
    with pytest.raises(NotInTransactionError):
        outbox.append(increased_message(sku))
    assert OutboxRecord.select().count() == 0


def test_not_in_transaction_is_an_outbox_error():
    assert issubclass(NotInTransactionError, OutboxError)


def test_append_inside_a_transaction_stores_the_message(db, sku):
    message = increased_message(sku, 7, stream=sku, position=1)
    with outbox.transaction():
        outbox.append(message)
    assert [essence(m) for m in pending_messages()] == [essence(message)]


def test_appends_are_pending_in_append_order(db, sku):
    messages = [increased_message(sku, quantity) for quantity in (3, 1, 2)]
    with outbox.transaction():
        for message in messages:
            outbox.append(message)
    assert [essence(m) for m in pending_messages()] == [essence(m) for m in messages]


def test_exception_after_a_command_rolls_back_its_state_and_its_message(db, sku):
    with pytest.raises(Boom), outbox.transaction():
        increase_product_quantity(sku, 5)
        raise Boom
    assert pending_messages() == []
    assert on_hand(sku) is None


def test_exception_after_a_ship_rolls_back_to_the_earlier_committed_state(db, sku):
    increase_product_quantity(sku, 10)
    committed = pending_messages()
    with pytest.raises(Boom), outbox.transaction():
        ship_product_quantity(sku, 4)
        increase_product_quantity(sku, 1)
        raise Boom
    assert on_hand(sku) == 10
    assert pending_messages() == committed


def test_commands_in_one_transaction_commit_together(db, sku):
    with outbox.transaction():
        increase_product_quantity(sku, 10)
        ship_product_quantity(sku, 4)
    assert on_hand(sku) == 6
    assert [m.type for m in pending_messages()] == [
        PRODUCT_QUANTITY_INCREASED,
        PRODUCT_QUANTITY_SHIPPED,
    ]


def test_failed_command_inside_a_transaction_rolls_back_the_earlier_command(db, sku):
    with pytest.raises(InsufficientQuantityOnHandError), outbox.transaction():
        increase_product_quantity(sku, 10)
        ship_product_quantity(sku, 11)
    assert on_hand(sku) is None
    assert pending_messages() == []


# --- validation on write ----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [{"sku": "x"}, {"sku": "x", "quantity": "5"}, {"sku": "x", "quantity": 5, "extra": 1}],
    ids=["missing-field", "wrong-type", "extra-field"],
)
def test_payload_that_fails_its_schema_is_refused_and_stores_nothing(db, payload):
    message = Message(type=PRODUCT_QUANTITY_INCREASED, schema_version=1, payload=payload)
    with pytest.raises(PayloadValidationError), outbox.transaction():
        outbox.append(message)
    assert OutboxRecord.select().count() == 0


def test_refused_payload_rolls_back_the_whole_transaction(db, sku):
    bad = Message(type=PRODUCT_QUANTITY_INCREASED, schema_version=1, payload={"sku": sku})
    with pytest.raises(PayloadValidationError), outbox.transaction():
        increase_product_quantity(sku, 5)
        outbox.append(bad)
    assert OutboxRecord.select().count() == 0
    assert on_hand(sku) is None


def test_message_of_unknown_type_is_refused_and_stores_nothing(db, sku):
    message = Message(type="Warehouse.Events.Nope", schema_version=1, payload={"sku": sku})
    with pytest.raises(UnknownSchemaError), outbox.transaction():
        outbox.append(message)
    assert OutboxRecord.select().count() == 0


def test_payload_is_stored_as_plain_avro_binary(db, sku):
    with outbox.transaction():
        outbox.append(increased_message("abc123", 50))
    [record] = OutboxRecord.select()
    assert bytes(record.payload) == b"\x0cabc123\x64"
    assert (record.type, record.schema_version) == (PRODUCT_QUANTITY_INCREASED, 1)


# --- message ids ------------------------------------------------------------


def test_message_ids_are_unique_uuids(db, sku):
    increase_product_quantity(sku, 10)
    ship_product_quantity(sku, 1)
    increase_product_quantity(f"{sku}-b", 1)
    ids = [m.id for m in pending_messages()]
    assert len(set(ids)) == 3
    assert all(str(uuid.UUID(message_id)) == message_id for message_id in ids)


def test_message_id_in_the_outbox_is_the_one_the_command_returned(db, sku):
    returned = [increase_product_quantity(sku, 10).id, ship_product_quantity(sku, 2).id]
    assert [m.id for m in pending_messages()] == returned
    assert [m.id for m in pending_messages()] == returned  # reading again changes nothing


def test_appending_the_same_message_id_twice_is_refused(db, sku):
    message = increased_message(sku)
    with outbox.transaction():
        outbox.append(message)
    with pytest.raises(peewee.IntegrityError), outbox.transaction():
        outbox.append(message)
    assert [essence(m) for m in pending_messages()] == [essence(message)]


# --- waking the drain -------------------------------------------------------


@pytest.fixture
def nudges(db):
    """The outbox with its nudges counted (bootstrap sets a nudge only on SQLite)."""
    calls = []
    outbox.install(
        Outbox(
            SchemaRegistry(SCHEMAS),
            notify_channel=unique_name("outbox"),
            nudge=None if is_postgres(db) else lambda: calls.append(1),
        )
    )
    return calls


@pytest.fixture
def notifications(db):
    """On PostgreSQL, a connection listening on the outbox's channel; None on SQLite."""
    if not is_postgres(db):
        yield None
        return
    listener = psycopg2.connect(postgres_url(db.database))
    listener.autocommit = True
    with listener.cursor() as cursor:
        cursor.execute(f'LISTEN "{outbox.current().notify_channel}"')
    yield listener
    listener.close()


def received_notifications(listener):
    """Wait for the first NOTIFY, then every one received so far."""

    def arrived():
        listener.poll()
        assert listener.notifies, "no NOTIFY yet"

    eventually(arrived)
    listener.poll()
    return [n.channel for n in listener.notifies]


def test_commit_that_appended_wakes_the_drain_exactly_once(db, nudges, notifications, sku):
    with pytest.raises(Boom), outbox.transaction():
        increase_product_quantity(sku, 1)
        raise Boom
    with outbox.transaction():
        pass
    with outbox.transaction():
        increase_product_quantity(sku, 1)
        increase_product_quantity(sku, 1)
    if is_postgres(db):
        # NOTIFY inside the transaction: delivered only by the commit.
        assert received_notifications(notifications) == [outbox.current().notify_channel]
    else:
        assert nudges == [1]


def test_transaction_that_rolled_back_or_appended_nothing_does_not_nudge(db, nudges, sku):
    with pytest.raises(Boom), outbox.transaction():
        increase_product_quantity(sku, 1)
        raise Boom
    with outbox.transaction():
        pass
    assert nudges == []


def test_failing_nudge_does_not_undo_the_committed_command(db, sku):
    def nudge():
        raise ConnectionError("broker down")

    outbox.install(Outbox(SchemaRegistry(SCHEMAS), notify_channel="unused", nudge=nudge))
    increase_product_quantity(sku, 3)
    assert on_hand(sku) == 3
    assert len(pending_messages()) == 1


def test_outbox_must_be_installed_before_use(monkeypatch):
    monkeypatch.setattr(outbox, "_current", None)
    with pytest.raises(ConfigurationError):
        outbox.current()
