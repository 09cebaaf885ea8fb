"""The products view and the low quantity notifier, fed messages straight through the
real Avro round trip and the listener engine (``testing.feed``), with no broker."""

import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging.errors import PayloadValidationError
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import ProcessedMessage
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors.low_quantity import LowQuantityNotifier, quantity_of
from cqrs_warehouse.warehouse.services import Warehouse
from cqrs_warehouse.warehouse.settings import WarehouseSettings
from cqrs_warehouse.warehouse.views.products import list_products
from tests.conftest import settings_for
from tests.db.listening import listener, warehouse_handler
from tests.support.services import unique_name


def increased(sku, quantity):
    return Message(PRODUCT_QUANTITY_INCREASED, 1, {"sku": sku, "quantity": quantity})


def shipped(sku, quantity):
    return Message(PRODUCT_QUANTITY_SHIPPED, 1, {"sku": sku, "quantity": quantity})


def notified(sku):
    return Message(NOTIFIED_LOW_PRODUCT_QUANTITY, 1, {"sku": sku})


@pytest.fixture
def give(runtime):
    """``give(listener, message)``: ``testing.feed`` through the runtime's engine."""
    return lambda listener, message: feed(runtime.engine, listener, message)


@pytest.fixture
def view(runtime):
    return warehouse_handler(runtime, "view")


@pytest.fixture
def notifier(runtime):
    return warehouse_handler(runtime, "notifier")


@pytest.fixture
def notifications(runtime):
    return lambda: [(m.type, m.payload) for m in runtime.outbox.pending()]


@pytest.fixture
def with_threshold(commands):
    """The notifier built with a threshold of a test's own (LOW_QUANTITY_THRESHOLD)."""
    return lambda value: LowQuantityNotifier(
        Warehouse(settings=WarehouseSettings(low_quantity_threshold=value), commands=commands)
    )


# --- products view ----------------------------------------------------------


def test_view_lists_nothing_when_no_event_arrived(runtime):
    """Scenario 1 at this tier."""
    assert list_products() == []


def test_view_subtracts_shipped_from_increased(give, view, sku):
    """Scenario 7."""
    give(view, increased(sku, 30))
    give(view, shipped(sku, 20))
    assert list_products() == [{"sku": sku, "quantity": 10}]


def test_view_adds_increases(give, view, sku):
    give(view, increased(sku, 30))
    give(view, increased(sku, 12))
    assert list_products() == [{"sku": sku, "quantity": 42}]


def test_view_lists_products_sorted_by_sku(give, view, sku):
    for suffix, quantity in (("c", 3), ("a", 1), ("b", 2)):
        give(view, increased(f"{sku}-{suffix}", quantity))
    assert list_products() == [
        {"sku": f"{sku}-a", "quantity": 1},
        {"sku": f"{sku}-b", "quantity": 2},
        {"sku": f"{sku}-c", "quantity": 3},
    ]


def test_view_sorts_skus_the_same_way_on_every_database(give, view):
    skus = ["b", "B", "a-c", "ab", "A", "a_c", "a.c", "10", "9", "a"]
    for sku in skus:
        give(view, increased(sku, 1))
    assert [p["sku"] for p in list_products()] == sorted(skus)


@pytest.fixture
def linguistic_postgres(postgres):
    """A runtime on a migrated PostgreSQL database whose default collation is
    linguistic (en-US), like the official postgres image's en_US.utf8."""
    name = unique_name("cw_icu")
    connection = postgres.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f'CREATE DATABASE "{name}" TEMPLATE template0 '
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
    finally:
        connection.close()
    postgres.created.append(name)  # dropped with the others
    runtime = build(settings_for(postgres.url(name)), embedded=True)
    migrations.migrate(runtime.database, runtime.slices)
    yield runtime
    runtime.database.close()


def test_view_sorts_skus_by_code_point_on_a_postgres_with_a_linguistic_collation(
    linguistic_postgres,
):
    view = warehouse_handler(linguistic_postgres, "view")
    skus = ["b", "B", "a-c", "ab", "A", "a_c", "a.c", "10", "9", "a"]
    for sku in skus:
        feed(linguistic_postgres.engine, view, increased(sku, 1))
    assert [p["sku"] for p in list_products()] == sorted(skus)


def test_view_keeps_a_sku_shipped_to_zero(give, view, sku):
    give(view, increased(sku, 5))
    give(view, shipped(sku, 5))
    assert list_products() == [{"sku": sku, "quantity": 0}]


def test_view_ignores_notified_low_product_quantity(give, view, sku):
    assert give(view, notified(sku)) is True
    assert list_products() == []


def test_view_applies_the_same_message_once(give, view, sku):
    message = increased(sku, 30)
    assert give(view, message) is True
    assert give(view, message) is False
    assert list_products() == [{"sku": sku, "quantity": 30}]


def test_view_applies_a_different_message_with_the_same_payload(give, view, sku):
    give(view, increased(sku, 30))
    give(view, increased(sku, 30))
    assert list_products() == [{"sku": sku, "quantity": 60}]


# --- low quantity notifier --------------------------------------------------


def test_notifier_notifies_only_when_a_shipment_reaches_the_threshold(
    give, notifier, notifications, sku
):
    """Scenario 8."""
    give(notifier, increased(sku, 10))
    assert quantity_of(sku) == 10
    assert notifications() == []
    give(notifier, shipped(sku, 4))
    assert quantity_of(sku) == 6
    assert notifications() == []
    give(notifier, shipped(sku, 1))
    assert quantity_of(sku) == 5
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_notifies_for_every_shipment_at_or_below_the_threshold(
    give, notifier, notifications, sku
):
    give(notifier, increased(sku, 10))
    give(notifier, shipped(sku, 6))
    give(notifier, shipped(sku, 4))
    assert quantity_of(sku) == 0
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})] * 2


def test_notifier_never_notifies_on_an_increase(give, notifier, notifications, sku):
    give(notifier, increased(sku, 1))
    give(notifier, increased(sku, 1))
    assert quantity_of(sku) == 2
    assert notifications() == []


def test_notifier_threshold_is_configurable(give, notifications, with_threshold, sku):
    notifier = with_threshold(20)
    give(notifier, increased(sku, 30))
    give(notifier, shipped(sku, 9))
    assert notifications() == []
    give(notifier, shipped(sku, 1))
    assert quantity_of(sku) == 20
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_with_threshold_zero_notifies_only_when_empty(
    give, notifications, with_threshold, sku
):
    notifier = with_threshold(0)
    give(notifier, increased(sku, 2))
    give(notifier, shipped(sku, 1))
    assert notifications() == []
    give(notifier, shipped(sku, 1))
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_keeps_each_skus_quantity_apart(give, notifier, notifications, sku):
    other = f"{sku}-other"
    give(notifier, increased(sku, 100))
    give(notifier, increased(other, 7))
    give(notifier, shipped(other, 2))
    assert (quantity_of(sku), quantity_of(other)) == (100, 5)
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": other})]


def test_notifier_quantity_of_an_unknown_sku_is_zero(runtime, sku):
    assert quantity_of(sku) == 0


def test_notifier_ignores_notified_low_product_quantity(give, notifier, notifications, sku):
    assert give(notifier, notified(sku)) is True
    assert quantity_of(sku) == 0
    assert notifications() == []


def test_notifier_applies_the_same_shipment_once(give, notifier, notifications, sku):
    message = shipped(sku, 6)
    give(notifier, increased(sku, 10))
    assert give(notifier, message) is True
    assert give(notifier, message) is False
    assert quantity_of(sku) == 4
    assert notifications() == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]


def test_notifier_does_not_touch_the_view(give, notifier, sku):
    give(notifier, increased(sku, 10))
    assert list_products() == []


def test_view_does_not_touch_the_notifier(give, view, sku):
    give(view, increased(sku, 10))
    assert quantity_of(sku) == 0


# --- the listener engine ----------------------------------------------------


def recording_spec(bindings, name="recorder"):
    received = []
    return listener(name, received.append, bindings=bindings), received


def test_listener_whose_bindings_do_not_match_skips_the_message(give, sku):
    spec, received = recording_spec(("Other.#", "Warehouse.Events.ProductQuantityShipped.*"))
    assert give(spec, increased(sku, 1)) is False
    assert received == []
    assert ProcessedMessage.select().count() == 0


def test_listener_whose_binding_matches_gets_the_decoded_message(give, sku):
    spec, received = recording_spec(("Other.#", "Warehouse.*.ProductQuantityIncreased.v1"))
    message = Message(
        PRODUCT_QUANTITY_INCREASED, 1, {"sku": sku, "quantity": 3}, stream=sku, position=1
    )
    assert give(spec, message) is True
    assert received == [message]


def test_listener_bound_to_one_event_type_applies_every_such_event_of_a_stream(
    runtime, commands, give, sku
):
    # The commands number a SKU's events 1, 2, 3... across all types; a listener
    # that receives only shipments never sees position 1 (the increase).
    commands.increase_product_quantity(sku, 10)
    first = commands.ship_product_quantity(sku, 4)
    second = commands.ship_product_quantity(sku, 6)
    spec, received = recording_spec(("Warehouse.Events.ProductQuantityShipped.*",))
    for message in runtime.outbox.pending():
        give(spec, message)
    assert received == [first, second]


def test_same_message_is_applied_once_per_listener(give, sku):
    first, first_received = recording_spec(("#",), name="first")
    second, second_received = recording_spec(("#",), name="second")
    message = increased(sku, 1)
    assert [give(first, message), give(second, message), give(first, message)] == [
        True,
        True,
        False,
    ]
    assert (first_received, second_received) == ([message], [message])


def test_handler_that_fails_rolls_back_its_writes_and_can_be_retried(give, view, sku):
    attempts = []

    def flaky(message):
        attempts.append(message.id)
        view.apply(message)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after writing")

    message = increased(sku, 8)
    with pytest.raises(RuntimeError):
        give(flaky, message)
    assert list_products() == []
    assert give(flaky, message) is True
    assert list_products() == [{"sku": sku, "quantity": 8}]


def test_notification_of_a_failed_notifier_run_is_rolled_back(give, notifier, notifications, sku):
    def notify_then_fail(message):
        notifier.apply(message)
        raise RuntimeError("after notifying")

    give(notifier, increased(sku, 3))
    with pytest.raises(RuntimeError):
        give(notify_then_fail, shipped(sku, 1))
    assert quantity_of(sku) == 3
    assert notifications() == []


def test_payload_that_fails_its_schema_never_reaches_a_handler(give, sku):
    spec, received = recording_spec(("#",))
    bad = Message(PRODUCT_QUANTITY_SHIPPED, 1, {"sku": sku, "quantity": "many"})
    with pytest.raises(PayloadValidationError):
        give(spec, bad)
    assert received == []
