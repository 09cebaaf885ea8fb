"""The products view and the low quantity notifier, fed messages straight through the
real Avro round trip and the listener runner (``testing.feed``), with no broker."""

import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.errors import PayloadValidationError
from cqrs_warehouse.messaging.listener_state import ProcessedMessage
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import Outbox
from cqrs_warehouse.messaging.routing import ListenerSpec
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.testing import feed, pending_messages
from cqrs_warehouse.warehouse.commands import increase_product_quantity, ship_product_quantity
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.processors.low_quantity import quantity_of
from cqrs_warehouse.warehouse.views import products
from cqrs_warehouse.warehouse.views.products import list_products
from tests.conftest import SCHEMAS, _admin_connection, postgres_url, unique_name

view = products.handle_message
notifier = low_quantity.handle_message


def increased(sku, quantity):
    return Message(PRODUCT_QUANTITY_INCREASED, 1, {"sku": sku, "quantity": quantity})


def shipped(sku, quantity):
    return Message(PRODUCT_QUANTITY_SHIPPED, 1, {"sku": sku, "quantity": quantity})


def notified(sku):
    return Message(NOTIFIED_LOW_PRODUCT_QUANTITY, 1, {"sku": sku})


def notifications():
    return [(m.type, m.payload) for m in pending_messages()]


@pytest.fixture
def threshold(db):
    """Set the notifier's threshold for one test; the default is restored afterwards."""
    yield lambda value: low_quantity.configure(threshold=value)
    low_quantity.configure(threshold=low_quantity.DEFAULT_THRESHOLD)


# --- products view ----------------------------------------------------------


def test_view_lists_nothing_when_no_event_arrived(db):
    """Scenario 1 at this tier."""
    assert list_products() == []


def test_view_subtracts_shipped_from_increased(db, sku):
    """Scenario 7."""
    feed(view, increased(sku, 30))
    feed(view, shipped(sku, 20))
    assert list_products() == [{"sku": sku, "quantity": 10}]


def test_view_adds_increases(db, sku):
    feed(view, increased(sku, 30))
    feed(view, increased(sku, 12))
    assert list_products() == [{"sku": sku, "quantity": 42}]


def test_view_lists_products_sorted_by_sku(db, sku):
    for suffix, quantity in (("c", 3), ("a", 1), ("b", 2)):
        feed(view, increased(f"{sku}-{suffix}", quantity))
    assert list_products() == [
        {"sku": f"{sku}-a", "quantity": 1},
        {"sku": f"{sku}-b", "quantity": 2},
        {"sku": f"{sku}-c", "quantity": 3},
    ]


def test_view_sorts_skus_the_same_way_on_every_database(db):
    skus = ["b", "B", "a-c", "ab", "A", "a_c", "a.c", "10", "9", "a"]
    for sku in skus:
        feed(view, increased(sku, 1))
    assert [p["sku"] for p in list_products()] == sorted(skus)


@pytest.fixture
def linguistic_postgres(postgres_databases):
    """A migrated PostgreSQL database whose default collation is linguistic (en-US),
    like the official postgres image's en_US.utf8; bound as the service's database."""
    name = unique_name("cw_icu")
    connection = _admin_connection()
    with connection.cursor() as cursor:
        cursor.execute(
            f'CREATE DATABASE "{name}" TEMPLATE template0 '
            "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    connection.close()
    postgres_databases.created.append(name)
    database = open_database(postgres_url(name))
    migrations.migrate(database)
    outbox.install(Outbox(SchemaRegistry(SCHEMAS), notify_channel=unique_name("test")))
    yield database
    database.close()


def test_view_sorts_skus_by_code_point_on_a_postgres_with_a_linguistic_collation(
    linguistic_postgres,
):
    skus = ["b", "B", "a-c", "ab", "A", "a_c", "a.c", "10", "9", "a"]
    for sku in skus:
        feed(view, increased(sku, 1))
    assert [p["sku"] for p in list_products()] == sorted(skus)


def test_view_keeps_a_sku_shipped_to_zero(db, sku):
    feed(view, increased(sku, 5))
    feed(view, shipped(sku, 5))
    assert list_products() == [{"sku": sku, "quantity": 0}]


def test_view_ignores_notified_low_product_quantity(db, sku):
    assert feed(view, notified(sku)) is True
    assert list_products() == []


def test_view_applies_the_same_message_once(db, sku):
    message = increased(sku, 30)
    assert feed(view, message) is True
    assert feed(view, message) is False
    assert list_products() == [{"sku": sku, "quantity": 30}]


def test_view_applies_a_different_message_with_the_same_payload(db, sku):
    feed(view, increased(sku, 30))
    feed(view, increased(sku, 30))
    assert list_products() == [{"sku": sku, "quantity": 60}]


# --- low quantity notifier --------------------------------------------------


def test_notifier_notifies_only_when_a_shipment_reaches_the_threshold(db, sku):
    """Scenario 8."""
    feed(notifier, increased(sku, 10))
    assert quantity_of(sku) == 10
    assert notifications() == []
    feed(notifier, shipped(sku, 4))
    assert quantity_of(sku) == 6
    assert notifications() == []
    feed(notifier, shipped(sku, 1))
    assert quantity_of(sku) == 5
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_notifies_for_every_shipment_at_or_below_the_threshold(db, sku):
    feed(notifier, increased(sku, 10))
    feed(notifier, shipped(sku, 6))
    feed(notifier, shipped(sku, 4))
    assert quantity_of(sku) == 0
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})] * 2


def test_notifier_never_notifies_on_an_increase(db, sku):
    feed(notifier, increased(sku, 1))
    feed(notifier, increased(sku, 1))
    assert quantity_of(sku) == 2
    assert notifications() == []


def test_notifier_threshold_is_configurable(db, sku, threshold):
    threshold(20)
    feed(notifier, increased(sku, 30))
    feed(notifier, shipped(sku, 9))
    assert notifications() == []
    feed(notifier, shipped(sku, 1))
    assert quantity_of(sku) == 20
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_with_threshold_zero_notifies_only_when_empty(db, sku, threshold):
    threshold(0)
    feed(notifier, increased(sku, 2))
    feed(notifier, shipped(sku, 1))
    assert notifications() == []
    feed(notifier, shipped(sku, 1))
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_keeps_each_skus_quantity_apart(db, sku):
    other = f"{sku}-other"
    feed(notifier, increased(sku, 100))
    feed(notifier, increased(other, 7))
    feed(notifier, shipped(other, 2))
    assert (quantity_of(sku), quantity_of(other)) == (100, 5)
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": other})]


def test_notifier_quantity_of_an_unknown_sku_is_zero(db, sku):
    assert quantity_of(sku) == 0


def test_notifier_ignores_notified_low_product_quantity(db, sku):
    assert feed(notifier, notified(sku)) is True
    assert quantity_of(sku) == 0
    assert notifications() == []


def test_notifier_applies_the_same_shipment_once(db, sku):
    message = shipped(sku, 6)
    feed(notifier, increased(sku, 10))
    assert feed(notifier, message) is True
    assert feed(notifier, message) is False
    assert quantity_of(sku) == 4
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_does_not_touch_the_view(db, sku):
    feed(notifier, increased(sku, 10))
    assert list_products() == []


def test_view_does_not_touch_the_notifier(db, sku):
    feed(view, increased(sku, 10))
    assert quantity_of(sku) == 0


# --- the listener runner ----------------------------------------------------


def recording_spec(bindings, name="recorder"):
    received = []
    spec = ListenerSpec(name=name, handler_path="", handler=received.append, bindings=bindings)
    return spec, received


def test_listener_whose_bindings_do_not_match_skips_the_message(db, sku):
    spec, received = recording_spec(("Other.#", "Warehouse.Events.ProductQuantityShipped.*"))
    assert feed(spec, increased(sku, 1)) is False
    assert received == []
    assert ProcessedMessage.select().count() == 0


def test_listener_whose_binding_matches_gets_the_decoded_message(db, sku):
    spec, received = recording_spec(("Other.#", "Warehouse.*.ProductQuantityIncreased.v1"))
    message = Message(
        PRODUCT_QUANTITY_INCREASED, 1, {"sku": sku, "quantity": 3}, stream=sku, position=1
    )
    assert feed(spec, message) is True
    assert received == [message]


def test_listener_bound_to_one_event_type_applies_every_such_event_of_a_stream(db, sku):
    # The commands number a SKU's events 1, 2, 3... across all types; a listener
    # that receives only shipments never sees position 1 (the increase).
    increase_product_quantity(sku, 10)
    first = ship_product_quantity(sku, 4)
    second = ship_product_quantity(sku, 6)
    spec, received = recording_spec(("Warehouse.Events.ProductQuantityShipped.*",))
    for message in pending_messages():
        feed(spec, message)
    assert received == [first, second]


def test_same_message_is_applied_once_per_listener(db, sku):
    first, first_received = recording_spec(("#",), name="first")
    second, second_received = recording_spec(("#",), name="second")
    message = increased(sku, 1)
    assert [feed(first, message), feed(second, message), feed(first, message)] == [
        True,
        True,
        False,
    ]
    assert (first_received, second_received) == ([message], [message])


def test_handler_that_fails_rolls_back_its_writes_and_can_be_retried(db, sku):
    attempts = []

    def flaky(message):
        attempts.append(message.id)
        products.handle_message(message)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after writing")

    message = increased(sku, 8)
    with pytest.raises(RuntimeError):
        feed(flaky, message)
    assert list_products() == []
    assert feed(flaky, message) is True
    assert list_products() == [{"sku": sku, "quantity": 8}]


def test_notification_of_a_failed_notifier_run_is_rolled_back(db, sku):
    def notify_then_fail(message):
        low_quantity.handle_message(message)
        raise RuntimeError("after notifying")

    feed(notifier, increased(sku, 3))
    with pytest.raises(RuntimeError):
        feed(notify_then_fail, shipped(sku, 1))
    assert quantity_of(sku) == 3
    assert notifications() == []


def test_payload_that_fails_its_schema_never_reaches_a_handler(db, sku):
    spec, received = recording_spec(("#",))
    bad = Message(PRODUCT_QUANTITY_SHIPPED, 1, {"sku": sku, "quantity": "many"})
    with pytest.raises(PayloadValidationError):
        feed(spec, bad)
    assert received == []
