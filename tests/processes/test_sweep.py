"""The workers' periodic sweep catches a commit whose wake-up was lost."""

from __future__ import annotations

import psycopg2
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


def test_the_sweep_prunes_processed_records_past_their_retention(
    scenarios: Installation,
) -> None:
    # Given processed-message records of eight days ago and of now, and an
    # archived message of a year ago (PROCESSED_MESSAGES_RETENTION is 7 days
    # by default; ARCHIVE_RETENTION unset keeps the archive whole)
    old, recent, archived = (unique_name(tag) for tag in ("old", "recent", "archived"))
    connection = psycopg2.connect(scenarios.database_url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO messaging.messaging_processed_messages "
                "(listener, message_id, applied_at) VALUES "
                "('products_view', %s, now() - interval '8 days'), ('products_view', %s, now())",
                (old, recent),
            )
            cursor.execute(
                "INSERT INTO messaging.messaging_archive "
                "(message_id, type, schema_version, payload, archived_at) "
                "VALUES (%s, 'Warehouse.Events.ProductQuantityIncreased', 1, '\\x00', "
                "now() - interval '365 days')",
                (archived,),
            )

        def ids(table: str) -> set[str]:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT message_id FROM messaging.{table} WHERE message_id = ANY(%s)",
                    ([old, recent, archived],),
                )
                return {row[0] for row in cursor.fetchall()}

        # Then a sweep of the running workers prunes the old record only
        def pruned() -> None:
            assert ids("messaging_processed_messages") == {recent}

        wait(pruned, timeout=20)
        assert ids("messaging_archive") == {archived}
    finally:
        connection.close()
