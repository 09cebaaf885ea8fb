"""The warehouse commands at the command level, on SQLite and PostgreSQL: state and
events commit together, a failed command changes nothing, no broker involved."""

import logging
import threading

import pytest

from cqrs_warehouse.warehouse.commands import MAX_COMMAND_QUANTITY, MAX_STOCK, ProductStock
from cqrs_warehouse.warehouse.errors import (
    InsufficientQuantityOnHandError,
    InvalidQuantityError,
    InvalidSkuError,
    StockLimitExceededError,
    WarehouseError,
)
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)

INVALID_QUANTITIES = [0, -1, True, False, 1.5, 5.0, "5", None, 2**31, MAX_COMMAND_QUANTITY + 1]
INVALID_SKUS = ["", "a" * 65, "a/b", "a b", "caf\u00e9", "abc\n", "a\tb", "a:b", None, 5]


@pytest.fixture
def pending(runtime):
    """The messages the commands left in the outbox, oldest first."""
    return runtime.outbox.pending


def on_hand(sku):
    """The command side's quantity of ``sku``; None when it has no row."""
    row = ProductStock.get_or_none(ProductStock.sku == sku)
    return None if row is None else row.quantity


def summary(messages):
    return [(m.type, m.payload) for m in messages]


def increased(sku, quantity):
    return (PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": quantity})


def shipped(sku, quantity):
    return (PRODUCT_QUANTITY_SHIPPED, {"sku": sku, "quantity": quantity})


# --- reference scenarios ----------------------------------------------------


def test_increase_of_a_new_sku_emits_increased_with_sku_and_quantity(commands, pending, sku):
    """Scenario 2."""
    message = commands.increase_product_quantity(sku, 50)
    assert summary(pending()) == [increased(sku, 50)]
    assert message.type == PRODUCT_QUANTITY_INCREASED
    assert message.schema_version == 1
    assert message.routing_key == "Warehouse.Events.ProductQuantityIncreased.v1"
    assert on_hand(sku) == 50


def test_increases_add_up(commands, pending, sku):
    commands.increase_product_quantity(sku, 50)
    commands.increase_product_quantity(sku, 25)
    assert on_hand(sku) == 75
    assert summary(pending()) == [increased(sku, 50), increased(sku, 25)]


def test_ship_of_an_unknown_sku_fails_with_insufficient_quantity_on_hand(commands, pending, sku):
    """Scenario 4."""
    with pytest.raises(InsufficientQuantityOnHandError) as caught:
        commands.ship_product_quantity(sku, 40)
    assert caught.value.title == "Insufficient quantity on hand."
    assert pending() == []
    assert on_hand(sku) is None


def test_ship_of_more_than_on_hand_fails_and_leaves_only_the_increase(commands, pending, sku):
    """Scenario 5, first part."""
    commands.increase_product_quantity(sku, 10)
    with pytest.raises(InsufficientQuantityOnHandError):
        commands.ship_product_quantity(sku, 11)
    assert summary(pending()) == [increased(sku, 10)]
    assert on_hand(sku) == 10


def test_ship_of_everything_on_hand_succeeds_and_leaves_zero(commands, pending, sku):
    """Scenario 5, ship 10 of 10."""
    commands.increase_product_quantity(sku, 10)
    commands.ship_product_quantity(sku, 10)
    assert summary(pending()) == [increased(sku, 10), shipped(sku, 10)]
    assert on_hand(sku) == 0


def test_ship_after_a_failed_ship_succeeds(commands, pending, sku):
    """Scenario 5: ship 11 fails, then ship 5 goes through."""
    commands.increase_product_quantity(sku, 10)
    with pytest.raises(InsufficientQuantityOnHandError):
        commands.ship_product_quantity(sku, 11)
    commands.ship_product_quantity(sku, 5)
    assert summary(pending()) == [increased(sku, 10), shipped(sku, 5)]
    assert on_hand(sku) == 5


def test_ship_of_part_of_the_stock_emits_shipped(commands, pending, sku):
    """Scenario 6."""
    commands.increase_product_quantity(sku, 50)
    commands.ship_product_quantity(sku, 40)
    assert summary(pending()) == [increased(sku, 50), shipped(sku, 40)]
    assert on_hand(sku) == 10


def test_ship_from_an_emptied_sku_fails(commands, pending, sku):
    commands.increase_product_quantity(sku, 3)
    commands.ship_product_quantity(sku, 3)
    with pytest.raises(InsufficientQuantityOnHandError):
        commands.ship_product_quantity(sku, 1)
    assert summary(pending()) == [increased(sku, 3), shipped(sku, 3)]
    assert on_hand(sku) == 0


def test_commands_on_one_sku_leave_other_skus_alone(commands, pending, sku):
    other = f"{sku}-other"
    commands.increase_product_quantity(sku, 10)
    commands.increase_product_quantity(other, 1)
    commands.ship_product_quantity(sku, 7)
    with pytest.raises(InsufficientQuantityOnHandError):
        commands.ship_product_quantity(other, 2)
    assert (on_hand(sku), on_hand(other)) == (3, 1)


# --- invalid input ----------------------------------------------------------


@pytest.mark.parametrize("quantity", INVALID_QUANTITIES, ids=repr)
def test_increase_with_an_invalid_quantity_is_refused_and_changes_nothing(
    commands, pending, sku, quantity
):
    with pytest.raises(InvalidQuantityError):
        commands.increase_product_quantity(sku, quantity)
    assert pending() == []
    assert on_hand(sku) is None


@pytest.mark.parametrize("quantity", INVALID_QUANTITIES, ids=repr)
def test_ship_with_an_invalid_quantity_is_refused_and_changes_nothing(
    commands, pending, sku, quantity
):
    commands.increase_product_quantity(sku, 10)
    before = pending()
    with pytest.raises(InvalidQuantityError):
        commands.ship_product_quantity(sku, quantity)
    assert pending() == before
    assert on_hand(sku) == 10


@pytest.mark.parametrize("bad_sku", INVALID_SKUS, ids=repr)
@pytest.mark.parametrize("command", ["increase_product_quantity", "ship_product_quantity"])
def test_command_with_an_invalid_sku_is_refused_and_changes_nothing(
    commands, pending, command, bad_sku
):
    with pytest.raises(InvalidSkuError):
        getattr(commands, command)(bad_sku, 5)
    assert pending() == []
    assert ProductStock.select().count() == 0


@pytest.mark.parametrize("bad_sku", INVALID_SKUS, ids=repr)
def test_notify_with_an_invalid_sku_is_refused_and_emits_nothing(commands, pending, bad_sku):
    with pytest.raises(InvalidSkuError):
        commands.notify_low_product_quantity(bad_sku, 1)
    assert pending() == []


@pytest.mark.parametrize("good_sku", ["a", "A" * 64, "abc-123_X.y", "0", "..."])
def test_sku_of_1_to_64_letters_digits_dash_underscore_and_dot_is_accepted(
    commands, pending, good_sku
):
    commands.increase_product_quantity(good_sku, 1)
    assert on_hand(good_sku) == 1
    assert summary(pending()) == [increased(good_sku, 1)]


def test_largest_command_quantity_is_accepted(commands, pending, sku):
    commands.increase_product_quantity(sku, MAX_COMMAND_QUANTITY)
    commands.ship_product_quantity(sku, MAX_COMMAND_QUANTITY)
    assert on_hand(sku) == 0
    assert summary(pending()) == [
        increased(sku, MAX_COMMAND_QUANTITY),
        shipped(sku, MAX_COMMAND_QUANTITY),
    ]


def test_every_command_error_is_a_warehouse_error_with_a_title():
    for error in (
        InvalidSkuError,
        InvalidQuantityError,
        InsufficientQuantityOnHandError,
        StockLimitExceededError,
    ):
        assert issubclass(error, WarehouseError)
        assert error.title.endswith(".")


# --- stock limit ------------------------------------------------------------


@pytest.fixture
def nearly_full(commands, sku):
    """``sku`` with MAX_STOCK - 5 on hand (too many increases to reach by commands)."""
    commands.increase_product_quantity(sku, 1)
    ProductStock.update(quantity=MAX_STOCK - 5).where(ProductStock.sku == sku).execute()
    return sku


def test_increase_up_to_the_stock_limit_succeeds(nearly_full, commands, pending):
    sku = nearly_full
    commands.increase_product_quantity(sku, 5)
    assert on_hand(sku) == MAX_STOCK
    assert summary(pending())[-1] == increased(sku, 5)


def test_increase_past_the_stock_limit_is_refused_and_changes_nothing(
    nearly_full, commands, pending
):
    sku = nearly_full
    before = pending()
    with pytest.raises(StockLimitExceededError):
        commands.increase_product_quantity(sku, 6)
    assert on_hand(sku) == MAX_STOCK - 5
    assert pending() == before


def test_increase_of_a_full_sku_is_refused_and_changes_nothing(nearly_full, commands, pending):
    sku = nearly_full
    commands.increase_product_quantity(sku, 5)
    before = pending()
    with pytest.raises(StockLimitExceededError):
        commands.increase_product_quantity(sku, 1)
    with pytest.raises(StockLimitExceededError):
        commands.increase_product_quantity(sku, MAX_COMMAND_QUANTITY)
    assert on_hand(sku) == MAX_STOCK
    assert pending() == before


def test_ship_from_a_full_sku_succeeds(nearly_full, commands, pending):
    sku = nearly_full
    commands.increase_product_quantity(sku, 5)
    commands.ship_product_quantity(sku, MAX_COMMAND_QUANTITY)
    assert on_hand(sku) == MAX_STOCK - MAX_COMMAND_QUANTITY


# --- stream and position ----------------------------------------------------


def test_events_carry_the_sku_as_stream_and_positions_in_commit_order(commands, pending, sku):
    commands.increase_product_quantity(sku, 10)
    commands.ship_product_quantity(sku, 3)
    commands.increase_product_quantity(sku, 1)
    messages = pending()
    assert [(m.stream, m.position) for m in messages] == [(sku, 1), (sku, 2), (sku, 3)]


def test_a_failed_command_takes_no_position(commands, pending, sku):
    commands.increase_product_quantity(sku, 10)
    with pytest.raises(InsufficientQuantityOnHandError):
        commands.ship_product_quantity(sku, 11)
    commands.ship_product_quantity(sku, 4)
    assert [m.position for m in pending()] == [1, 2]


def test_each_sku_counts_its_own_positions(commands, pending, sku):
    other = f"{sku}-other"
    commands.increase_product_quantity(sku, 1)
    commands.increase_product_quantity(other, 1)
    commands.increase_product_quantity(sku, 1)
    assert [(m.stream, m.position) for m in pending()] == [
        (sku, 1),
        (other, 1),
        (sku, 2),
    ]


def test_returned_message_is_the_one_in_the_outbox(commands, pending, sku):
    first = commands.increase_product_quantity(sku, 10)
    second = commands.ship_product_quantity(sku, 4)
    assert pending() == [first, second]


# --- notify low product quantity --------------------------------------------


def test_notify_low_product_quantity_emits_notified_with_only_the_sku(commands, pending, sku):
    message = commands.notify_low_product_quantity(sku, 3)
    assert summary(pending()) == [(NOTIFIED_LOW_PRODUCT_QUANTITY, {"sku": sku})]
    assert pending() == [message]
    assert message.routing_key == "Warehouse.Events.NotifiedLowProductQuantity.v1"


def test_notify_low_product_quantity_does_not_change_stock(commands, pending, sku):
    commands.increase_product_quantity(sku, 10)
    commands.notify_low_product_quantity(sku, 3)
    commands.notify_low_product_quantity(f"{sku}-unknown", 0)
    assert on_hand(sku) == 10
    assert on_hand(f"{sku}-unknown") is None


def test_notify_low_product_quantity_does_not_check_the_quantity(commands, pending, sku):
    commands.notify_low_product_quantity(sku, 1000)
    commands.notify_low_product_quantity(sku, 0)
    assert len(pending()) == 2


def test_notify_low_product_quantity_logs_a_warning_naming_sku_and_quantity(
    commands, pending, sku, caplog
):
    with caplog.at_level(logging.WARNING):
        commands.notify_low_product_quantity(sku, 3)
    [record] = [r for r in caplog.records if sku in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "3" in record.getMessage().replace(sku, "")


# --- concurrency ------------------------------------------------------------


def run_concurrently(database, count, action):
    """Run ``action(index)`` in ``count`` threads released together; their results or errors."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def worker(index):
        try:
            barrier.wait()
            results[index] = action(index)
        except Exception as error:
            results[index] = error
        finally:
            database.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_shipments_never_take_more_than_is_on_hand(runtime, commands, pending, sku):
    commands.increase_product_quantity(sku, 5)
    results = run_concurrently(
        runtime.database, 12, lambda _: commands.ship_product_quantity(sku, 1)
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 7
    assert all(isinstance(r, InsufficientQuantityOnHandError) for r in failures)
    assert on_hand(sku) == 0
    shipments = [m for m in pending() if m.type == PRODUCT_QUANTITY_SHIPPED]
    assert len(shipments) == 5


def test_concurrent_increases_of_a_new_sku_all_count_with_distinct_positions(
    runtime, commands, pending, sku
):
    results = run_concurrently(
        runtime.database, 8, lambda i: commands.increase_product_quantity(sku, i + 1)
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    assert on_hand(sku) == sum(range(1, 9))
    assert sorted(m.position for m in pending()) == list(range(1, 9))
