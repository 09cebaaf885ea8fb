"""The event archive and `rebuild`: a listener emptied and replayed from the
archive while live traffic goes on ends as if it had never been emptied."""

from __future__ import annotations

import datetime
import random
import threading
import time

import pytest

from cqrs_warehouse.messaging import listener_state
from cqrs_warehouse.messaging.archive import (
    ArchivedMessage,
    RebuildError,
    archive_message,
    prune,
    rebuild,
)
from cqrs_warehouse.messaging.outbox import OutboxRecord, current
from cqrs_warehouse.messaging.routing import ListenerSpec
from cqrs_warehouse.messaging.testing import clear_outbox, feed, pending_messages
from cqrs_warehouse.warehouse.commands import (
    ProductStock,
    increase_product_quantity,
    ship_product_quantity,
)
from cqrs_warehouse.warehouse.errors import InsufficientQuantityOnHandError
from cqrs_warehouse.warehouse.views.products import handle_message, list_products
from cqrs_warehouse.warehouse.views.products.handler import reset

VIEW = ListenerSpec(
    name="products_view",
    handler_path="",
    handler=handle_message,
    bindings=("Warehouse.Events.#",),
    reset=reset,
)
ARCHIVE = ListenerSpec(name="archive", handler_path="", handler=archive_message, bindings=("#",))


def run_commands(skus: list[str], count: int, rng: random.Random) -> list:
    """Run ``count`` random commands and take their messages out of the outbox."""
    for _ in range(count):
        sku = rng.choice(skus)
        try:
            if rng.random() < 0.6:
                increase_product_quantity(sku, rng.randint(1, 20))
            else:
                ship_product_quantity(sku, rng.randint(1, 15))
        except InsufficientQuantityOnHandError:
            pass
    messages = pending_messages()
    clear_outbox()
    return messages


def command_state(skus: list[str]) -> list[dict]:
    rows = ProductStock.select().where(ProductStock.sku.in_(skus)).order_by(ProductStock.sku)
    return [{"sku": row.sku, "quantity": row.quantity} for row in rows]


def test_a_rebuild_under_live_traffic_ends_as_if_the_listener_never_stopped(db, sku):
    rng = random.Random(7)
    skus = sorted(f"{sku}-{n}" for n in range(4))
    # Given a history both the view and the archive received...
    for message in run_commands(skus, 60, rng):
        feed(ARCHIVE, message)
        feed(VIEW, message)
    # ...and messages the view applied that the archive has not received yet
    lagging = run_commands(skus, 10, rng)
    for message in lagging:
        feed(VIEW, message)

    live_done = threading.Event()

    def live_traffic() -> None:
        # The archive catches up once the reset happened...
        deadline = time.monotonic() + 10
        while (
            listener_state.StreamPosition.select()
            .where(listener_state.StreamPosition.listener == VIEW.name)
            .count()
            and time.monotonic() < deadline
        ):
            time.sleep(0.005)
        for message in lagging:
            feed(ARCHIVE, message)
        # ...while new commands keep arriving, in either order per listener
        for _ in range(15):
            for message in run_commands(skus, 2, rng):
                first, second = (ARCHIVE, VIEW) if rng.random() < 0.5 else (VIEW, ARCHIVE)
                feed(first, message)
                feed(second, message)
        live_done.set()

    thread = threading.Thread(target=live_traffic)
    thread.start()
    report = rebuild(VIEW, ARCHIVE, current().registry, catch_up_timeout=20)
    thread.join()
    assert live_done.is_set()

    assert report.applied > 0
    assert [p for p in list_products() if p["sku"] in skus] == command_state(skus)
    assert listener_state.HeldMessage.select().count() == 0


def test_a_listener_without_a_reset_cannot_be_rebuilt(db):
    notifier = ListenerSpec(name="notifier", handler_path="", handler=print, bindings=("#",))
    with pytest.raises(RebuildError, match="declares no 'reset'"):
        rebuild(notifier, ARCHIVE, current().registry)


def test_a_rebuild_fails_when_the_archive_never_catches_up(db, sku):
    for message in run_commands([sku], 3, random.Random(1)):
        feed(VIEW, message)
    with pytest.raises(RebuildError, match="did not catch up"):
        rebuild(VIEW, ARCHIVE, current().registry, catch_up_timeout=0.3)


def test_the_archive_keeps_messages_as_written_and_pruning_drops_old_ones(db, sku):
    increase_product_quantity(sku, 4)
    [message] = pending_messages()
    stored = OutboxRecord.get()
    feed(ARCHIVE, message)
    archived = ArchivedMessage.get(ArchivedMessage.message_id == message.id)
    assert bytes(archived.payload) == bytes(stored.payload)
    assert (archived.stream, archived.position) == (sku, 1)
    assert prune(datetime.timedelta(days=1)) == 0
    ArchivedMessage.update(archived_at=datetime.datetime(2000, 1, 1)).execute()
    assert prune(datetime.timedelta(days=1)) == 1
    assert ArchivedMessage.select().count() == 0
