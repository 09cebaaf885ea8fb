"""The SPEC's reference scenarios, end to end: HTTP into gunicorn, commands on
PostgreSQL, the outbox drained by dramatiq to RabbitMQ, listeners in dramatiq.

What was published is read from the ``watcher`` listener (bound to ``#``);
the view is read over HTTP. Tests share one installation and keep apart by
their own SKUs. An absence ("nothing published") is only asserted after a
later message about the same SKU was seen, so that it cannot pass merely
because the workers had not got there yet.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.processes.state import (
    INCREASED,
    NOTIFIED,
    SHIPPED,
    all_messages,
    messages,
    normalized,
    notifier_quantity,
    one,
    outbox_size,
    received_by_shipment_recorder,
    summary,
    wait,
)
from tests.support.installation import Installation

pytestmark = pytest.mark.processes

INSUFFICIENT = "Insufficient quantity on hand."


def increased(sku: str, quantity: int) -> tuple[str, dict[str, Any]]:
    return ("ProductQuantityIncreased", {"sku": sku, "quantity": quantity})


def shipped(sku: str, quantity: int) -> tuple[str, dict[str, Any]]:
    return ("ProductQuantityShipped", {"sku": sku, "quantity": quantity})


def notified(sku: str) -> tuple[str, dict[str, Any]]:
    return ("NotifiedLowProductQuantity", {"sku": sku})


def published_eventually(
    installation: Installation, sku: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    """Wait until the watcher has received exactly ``expected`` about ``sku``."""

    def check() -> None:
        assert summary(messages(installation, sku)) == normalized(expected)

    wait(check)


def notifier_eventually_holds(installation: Installation, sku: str, quantity: int) -> None:
    """Wait until the notifier has applied the events that leave ``sku`` at ``quantity``."""

    def check() -> None:
        assert notifier_quantity(installation, sku) == quantity

    wait(check)


def assert_ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def assert_bad_request(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body.get("title") or body.get("description"), body
    return body


# --- 1 ----------------------------------------------------------------------


def test_a_new_installation_answers_its_first_products_request_with_an_empty_list(
    first_products_response: Any,
) -> None:
    response = first_products_response
    assert response is not None
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == []


# --- 2 ----------------------------------------------------------------------


def test_increasing_a_product_returns_200_and_publishes_one_product_quantity_increased(
    scenarios: Installation, sku: str
) -> None:
    body = assert_ok(scenarios.increase(sku, 50))

    published_eventually(scenarios, sku, [increased(sku, 50)])
    message = one(messages(scenarios, sku))
    assert message.type == INCREASED
    assert message.schema_version == 1
    assert message.payload == {"sku": sku, "quantity": 50}
    assert message.id == body["message_id"]


# --- 3 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty body"),
        pytest.param({"quantity": 0}, id="quantity 0"),
        pytest.param({"quantity": -1}, id="quantity -1"),
        pytest.param({}, id="quantity missing"),
        pytest.param({"quantity": "5"}, id="quantity a string"),
        pytest.param({"quantity": 2.5}, id="quantity not an integer"),
    ],
)
def test_an_invalid_increase_is_refused_with_400_and_publishes_nothing(
    scenarios: Installation, sku: str, body: Any
) -> None:
    path = f"/warehouse/products/{sku}/increase_quantity"
    if isinstance(body, bytes):
        response = scenarios.post(path, raw=body)
    else:
        response = scenarios.post(path, body)
    assert_bad_request(response)

    # A later, valid command on the same SKU: once it is seen, anything the
    # refused one had published would have been seen before it.
    assert_ok(scenarios.increase(sku, 1))
    published_eventually(scenarios, sku, [increased(sku, 1)])


# --- 4 ----------------------------------------------------------------------


def test_shipping_an_unknown_sku_is_refused_with_insufficient_quantity_and_publishes_nothing(
    scenarios: Installation, sku: str
) -> None:
    body = assert_bad_request(scenarios.ship(sku, 40))
    assert INSUFFICIENT in (body.get("title"), body.get("description")), body

    assert_ok(scenarios.increase(sku, 1))
    published_eventually(scenarios, sku, [increased(sku, 1)])


# --- 5 ----------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [10, 5])
def test_with_ten_on_hand_shipping_eleven_fails_and_shipping_ten_or_five_notifies_once(
    scenarios: Installation, sku: str, quantity: int
) -> None:
    assert_ok(scenarios.increase(sku, 10))

    body = assert_bad_request(scenarios.ship(sku, 11))
    assert INSUFFICIENT in (body.get("title"), body.get("description")), body
    published_eventually(scenarios, sku, [increased(sku, 10)])

    assert_ok(scenarios.ship(sku, quantity))
    published_eventually(
        scenarios, sku, [increased(sku, 10), shipped(sku, quantity), notified(sku)]
    )
    assert notifier_quantity(scenarios, sku) == 10 - quantity


# --- 6 ----------------------------------------------------------------------


def test_with_fifty_on_hand_shipping_forty_publishes_increased_and_shipped_and_no_notification(
    scenarios: Installation, sku: str
) -> None:
    assert_ok(scenarios.increase(sku, 50))
    assert_ok(scenarios.ship(sku, 40))

    published_eventually(scenarios, sku, [increased(sku, 50), shipped(sku, 40)])
    # Once the notifier has applied the shipment, a notification would be in
    # the outbox already; a later message about the SKU then comes after it.
    notifier_eventually_holds(scenarios, sku, 10)
    assert_ok(scenarios.increase(sku, 1))
    published_eventually(scenarios, sku, [increased(sku, 50), shipped(sku, 40), increased(sku, 1)])
    assert messages(scenarios, sku, NOTIFIED) == []


# --- 7 ----------------------------------------------------------------------


def test_the_products_view_eventually_lists_what_is_left_after_increasing_30_and_shipping_20(
    scenarios: Installation, sku: str
) -> None:
    assert_ok(scenarios.increase(sku, 30))
    assert_ok(scenarios.ship(sku, 20))

    def listed() -> None:
        products = scenarios.products()
        assert [p for p in products if p["sku"] == sku] == [{"sku": sku, "quantity": 10}]
        assert products == sorted(products, key=lambda p: p["sku"])

    wait(listed)


# --- 8 ----------------------------------------------------------------------


def test_the_notifier_fed_increased_10_shipped_4_shipped_1_notifies_exactly_once(
    scenarios: Installation, sku: str
) -> None:
    # Back to back, as a client would: the notifier must still apply the
    # SKU's events in the order they were committed (10, then 6, then 5).
    assert_ok(scenarios.increase(sku, 10))
    assert_ok(scenarios.ship(sku, 4))
    assert_ok(scenarios.ship(sku, 1))
    notifier_eventually_holds(scenarios, sku, 5)

    published_eventually(
        scenarios, sku, [increased(sku, 10), shipped(sku, 4), shipped(sku, 1), notified(sku)]
    )
    # Every notification the shipments caused is committed by now; one more
    # message about the SKU, once seen, comes after any of them.
    assert_ok(scenarios.increase(sku, 1))
    published_eventually(
        scenarios,
        sku,
        [increased(sku, 10), shipped(sku, 4), shipped(sku, 1), notified(sku), increased(sku, 1)],
    )
    assert len(messages(scenarios, sku, NOTIFIED)) == 1


# --- beyond the numbered scenarios ----------------------------------------


def test_a_user_defined_listener_receives_exactly_the_shipped_messages(
    scenarios: Installation, sku: str
) -> None:
    assert_ok(scenarios.increase(sku, 10))
    assert_ok(scenarios.ship(sku, 3))
    assert_ok(scenarios.ship(sku, 2))  # leaves 5: a notification follows
    published_eventually(
        scenarios, sku, [increased(sku, 10), shipped(sku, 3), shipped(sku, 2), notified(sku)]
    )

    def recorder_has(count: int) -> None:
        assert len(received_by_shipment_recorder(scenarios, sku)) == count

    wait(lambda: recorder_has(2))
    # The increase and the notification were published before this control
    # shipment: once the user's listener has it, it would have had them too.
    assert_ok(scenarios.ship(sku, 1))
    wait(lambda: recorder_has(3))

    shipped_ids = sorted(m.id for m in messages(scenarios, sku, SHIPPED))
    received = received_by_shipment_recorder(scenarios, sku)
    assert sorted(r.message_id for r in received) == shipped_ids
    assert {r.type for r in received} == {SHIPPED}
    assert sorted(r.quantity for r in received) == [1, 2, 3]


def test_every_published_message_carries_a_unique_id_that_the_command_returned(
    scenarios: Installation, sku: str
) -> None:
    returned = [
        assert_ok(scenarios.increase(sku, 5))["message_id"],
        assert_ok(scenarios.increase(sku, 5))["message_id"],
        assert_ok(scenarios.ship(sku, 1))["message_id"],
    ]
    published_eventually(scenarios, sku, [increased(sku, 5), increased(sku, 5), shipped(sku, 1)])

    ids = [m.id for m in messages(scenarios, sku)]
    assert sorted(ids) == sorted(returned)
    assert len(set(ids)) == 3
    for message_id in ids:
        uuid.UUID(message_id)
    everything = [m.id for m in all_messages(scenarios)]
    assert len(everything) == len(set(everything)), "a message id was received twice"


def test_the_outbox_is_empty_once_every_message_is_published(
    scenarios: Installation, sku: str
) -> None:
    assert_ok(scenarios.increase(sku, 7))
    published_eventually(scenarios, sku, [increased(sku, 7)])

    def outbox_empty() -> None:
        assert outbox_size(scenarios) == 0

    wait(outbox_empty)
