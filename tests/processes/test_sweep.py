"""The workers' periodic sweep catches a commit whose wake-up was lost."""

from __future__ import annotations

import pytest

from cqrs_warehouse.runtime import build
from cqrs_warehouse.settings import Settings
from tests.processes.state import INCREASED, messages, wait
from tests.support.installation import Installation
from tests.support.services import unique_name

pytestmark = pytest.mark.processes


def test_a_commit_whose_wake_up_was_lost_is_published_by_the_sweep(
    scenarios: Installation, sku: str
) -> None:
    # Given a command committed in this process on the installation's database,
    # by a runtime whose QUEUE_PREFIX differs: its commit signals the drain on
    # the channel of that prefix (Settings.notify_channel), where no worker
    # listens, so its wake-up is lost
    elsewhere = build(
        Settings(
            database_url=scenarios.database_url,
            listeners_config=scenarios.env["LISTENERS_CONFIG"],
            schemas_dir=scenarios.env["SCHEMAS_DIR"],
            queue_prefix=unique_name("nobody_listens") + ".",
            slices=scenarios.slices,
        ),
        embedded=True,
    )
    assert elsewhere.settings.notify_channel != Settings.from_env(scenarios.env).notify_channel
    try:
        with elsewhere.database.connection_context():
            elsewhere.services["warehouse"].commands.increase_product_quantity(sku, 7)
    finally:
        elsewhere.database.close()

    # Then the workers' sweep publishes it, and the view applies it
    def published() -> None:
        assert [m.payload for m in messages(scenarios, sku, INCREASED)] == [
            {"sku": sku, "quantity": 7}
        ]
        assert {"sku": sku, "quantity": 7} in scenarios.products()

    wait(published, timeout=20)
