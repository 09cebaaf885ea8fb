"""The periodic sweep catches a commit whose wake-up was lost."""

from __future__ import annotations

from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.outbox import Outbox
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.warehouse.commands import increase_product_quantity
from tests.conftest import SCHEMAS
from tests.e2e.harness import assert_eventually

INCREASED = "Warehouse.Events.ProductQuantityIncreased"


def test_a_commit_whose_wake_up_was_lost_is_published_by_the_sweep(installation, sku):
    # Given a command committed in this process, whose NOTIFY goes to a
    # channel no worker listens on: its wake-up is lost
    installation._bind()
    previous = outbox._current
    outbox.install(Outbox(SchemaRegistry(SCHEMAS), notify_channel="nobody_listens_here"))
    try:
        increase_product_quantity(sku, 7)
    finally:
        if previous is not None:
            outbox.install(previous)

    # Then the workers' sweep publishes it, and the view applies it
    def published() -> None:
        assert [m.payload for m in installation.messages(sku, INCREASED)] == [
            {"sku": sku, "quantity": 7}
        ]
        assert {"sku": sku, "quantity": 7} in installation.products()

    assert_eventually(published, timeout=20)
