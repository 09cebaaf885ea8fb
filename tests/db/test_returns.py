"""The tests' second slice (tests/slices/returns), added without touching src/:
its command appends ProductReturned v1 to the outbox in its own transaction,
its view keeps the quantity returned, and its API reads its own writes. On
SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import falcon.testing
import pytest

from cqrs_warehouse.messaging.consistency import decode_token
from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.testing import eventually, feed
from cqrs_warehouse.web import create_app
from tests.db.listening import apply, listener
from tests.slices.returns import ReturnsView
from tests.slices.returns.returns import (
    PRODUCT_RETURNED,
    ReturnCount,
    ReturnsError,
    ReturnsSettings,
    returned,
)
from tests.support.installation import project_listeners, write_listeners_config

RETURNS_VIEW = {
    "name": "returns_view",
    "handler": "tests.slices.returns:ReturnsView",
    "bindings": ["Returns.Events.#"],
}


class Boom(Exception):
    pass


@pytest.fixture
def returns(runtime):
    """The slice's services, as the runtime built them: its command."""
    return runtime.services["returns"]


@pytest.fixture
def view(returns):
    return listener("returns_view", ReturnsView(returns), bindings=("Returns.Events.#",))


def returned_event(sku: str, quantity: int, position: int) -> Message:
    return Message(
        type=PRODUCT_RETURNED,
        schema_version=1,
        payload={"sku": sku, "quantity": quantity},
        stream=f"returns:{sku}",
        position=position,
        predecessors={f"{PRODUCT_RETURNED}.v1": position - 1} if position > 1 else {},
    )


# --- the command ------------------------------------------------------------------


def test_the_slice_is_built_with_its_own_settings(runtime, returns):
    assert [s.name for s in runtime.slices][-1] == "returns"
    assert returns.settings == ReturnsSettings()  # RETURNS_MOST_PER_RETURN unset: 1000
    assert returns.outbox is runtime.outbox


def test_a_return_appends_product_returned_v1_to_the_outbox(runtime, returns, sku):
    first = returns.record_return(sku, 3)
    second = returns.record_return(sku, 2)

    pending = runtime.outbox.pending()
    assert pending == [first, second]
    assert [(m.type, m.schema_version, m.payload) for m in pending] == [
        (PRODUCT_RETURNED, 1, {"sku": sku, "quantity": 3}),
        (PRODUCT_RETURNED, 1, {"sku": sku, "quantity": 2}),
    ]
    # Its own stream, numbered by its own state: one position per return.
    assert [(m.stream, m.position) for m in pending] == [
        (f"returns:{sku}", 1),
        (f"returns:{sku}", 2),
    ]
    assert second.predecessors == {f"{PRODUCT_RETURNED}.v1": 1}
    assert ReturnCount.get(ReturnCount.sku == sku).version == 2
    assert second.routing_key == f"{PRODUCT_RETURNED}.v1"


def test_a_return_undone_with_its_transaction_leaves_neither_state_nor_event(runtime, returns, sku):
    returns.record_return(sku, 1)
    with pytest.raises(Boom), runtime.outbox.transaction():
        returns.record_return(sku, 5)
        raise Boom
    assert [m.payload["quantity"] for m in runtime.outbox.pending()] == [1]
    assert ReturnCount.get(ReturnCount.sku == sku).version == 1


@pytest.mark.parametrize("quantity", [0, -1, 1001])
def test_a_return_of_a_quantity_out_of_bounds_is_refused_and_changes_nothing(
    runtime, returns, sku, quantity
):
    with pytest.raises(ReturnsError):
        returns.record_return(sku, quantity)
    assert runtime.outbox.pending() == []
    assert ReturnCount.get_or_none(ReturnCount.sku == sku) is None


# --- the view -------------------------------------------------------------------------


def test_the_view_keeps_the_quantity_returned_per_sku(runtime, returns, view, sku):
    other = f"{sku}-other"
    returns.record_return(sku, 3)
    returns.record_return(other, 7)
    returns.record_return(sku, 2)
    for message in runtime.outbox.pending():
        assert feed(runtime.engine, view, message) is True
    assert (returned(sku), returned(other)) == (5, 7)
    assert returned(f"{sku}-never") == 0


def test_the_view_applies_each_return_once_and_in_its_streams_order(runtime, view, sku):
    first, second = returned_event(sku, 4, 1), returned_event(sku, 6, 2)
    assert apply(runtime.engine, view, second) == [Outcome.HELD]
    assert returned(sku) == 0
    assert apply(runtime.engine, view, first) == [Outcome.APPLIED]
    assert returned(sku) == 10  # the held one applied with its predecessor
    assert feed(runtime.engine, view, first) is False  # a duplicate
    assert returned(sku) == 10


def test_the_view_can_be_reset_for_a_rebuild(runtime, view, sku):
    feed(runtime.engine, view, returned_event(sku, 4, 1))
    assert view.reset is not None
    view.reset()
    assert returned(sku) == 0


# --- its API ------------------------------------------------------------------------


@pytest.fixture
def with_returns_view(runtime_with, tmp_path):
    """A runtime whose listeners.yaml adds the returns view to the project's."""
    config = write_listeners_config(
        tmp_path / "listeners.yaml", [*project_listeners(), RETURNS_VIEW]
    )
    return runtime_with(listeners_config=str(config))


def test_the_runtime_builds_the_slices_handler_with_the_slices_services(with_returns_view):
    spec = with_returns_view.routing.listener("returns_view")
    assert isinstance(spec.handler, ReturnsView)
    assert spec.reads == {PRODUCT_RETURNED: 1}
    assert spec.reset is not None


def test_a_return_posted_is_read_back_with_its_token(with_returns_view, sku):
    runtime = with_returns_view
    client = falcon.testing.TestClient(create_app(runtime))
    response = client.simulate_post(f"/returns/{sku}", json={"quantity": 4})
    assert response.status_code == 200, response.text
    token = response.json["consistency_token"]
    assert decode_token(token) == (f"returns:{sku}", 1)
    [event] = runtime.outbox.pending()
    assert event.id == response.json["message_id"]

    def feed_when_someone_waits() -> None:
        try:
            eventually(lambda: _assert_waiting(runtime), timeout=5, interval=0.001)
            feed(runtime.engine, runtime.routing.listener("returns_view"), event)
        finally:
            runtime.database.close()

    feeder = threading.Thread(target=feed_when_someone_waits)
    feeder.start()
    read = client.simulate_get(f"/returns/{sku}", params={"after": token})
    feeder.join()
    assert read.status_code == 200, read.text
    assert read.json == {"sku": sku, "returned": 4}


def _assert_waiting(runtime) -> None:
    assert runtime.consistency.waiting() > 0, "no reader waits yet"


def test_a_return_the_body_schema_refuses_is_a_400_and_changes_nothing(client, runtime, sku):
    response = client.simulate_post(f"/returns/{sku}", json={"quantity": "3"})
    assert response.status_code == 400, response.text
    assert response.json["title"] == "Invalid return."
    assert runtime.outbox.pending() == []
