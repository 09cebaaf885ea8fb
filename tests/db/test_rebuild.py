"""The event archive and `rebuild`: a listener emptied and replayed from the
archive while live traffic goes on ends as if it had never been emptied."""

from __future__ import annotations

import datetime
import random
import threading

import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage, prune
from cqrs_warehouse.messaging.errors import RebuildError
from cqrs_warehouse.messaging.listening.rebuild import rebuild
from cqrs_warehouse.messaging.storage.models import HeldMessage, OutboxRecord
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.errors import InsufficientQuantityOnHandError
from cqrs_warehouse.warehouse.views.products import list_products
from tests.db.listening import listener, warehouse_handler


@pytest.fixture
def view(runtime):
    handler = warehouse_handler(runtime, "view")
    return listener("products_view", handler, bindings=("Warehouse.Events.#",), reset=handler.reset)


@pytest.fixture
def archive(runtime):
    return listener("archive", warehouse_handler(runtime, "archive"))


def run_commands(runtime, skus: list[str], count: int, rng: random.Random) -> list:
    """Run ``count`` random commands and take their messages out of the outbox."""
    commands = runtime.services["warehouse"].commands
    for _ in range(count):
        sku = rng.choice(skus)
        try:
            if rng.random() < 0.6:
                commands.increase_product_quantity(sku, rng.randint(1, 20))
            else:
                commands.ship_product_quantity(sku, rng.randint(1, 15))
        except InsufficientQuantityOnHandError:
            pass
    messages = runtime.outbox.pending()
    OutboxRecord.delete().execute()
    return messages


def command_state(skus: list[str]) -> list[dict]:
    rows = ProductStock.select().where(ProductStock.sku.in_(skus)).order_by(ProductStock.sku)
    return [{"sku": row.sku, "quantity": row.quantity} for row in rows]


def test_a_rebuild_under_live_traffic_ends_as_if_the_listener_never_stopped(
    runtime, view, archive, sku
):
    engine = runtime.engine
    rng = random.Random(7)
    skus = sorted(f"{sku}-{n}" for n in range(4))
    # Given a history both the view and the archive received...
    for message in run_commands(runtime, skus, 60, rng):
        feed(engine, archive, message)
        feed(engine, view, message)
    # ...and messages the view applied that the archive has not received yet
    lagging = run_commands(runtime, skus, 10, rng)
    for message in lagging:
        feed(engine, view, message)

    reset = threading.Event()  # the view was emptied, its replay has begun
    live_done = threading.Event()

    def live_traffic() -> None:
        try:
            # The archive catches up while the rebuild waits for it...
            for message in lagging:
                feed(engine, archive, message)
            assert reset.wait(timeout=10), "the rebuild never began its replay"
            # ...and new commands keep arriving, in either order per listener
            for _ in range(15):
                for message in run_commands(runtime, skus, 2, rng):
                    first, second = (archive, view) if rng.random() < 0.5 else (view, archive)
                    feed(engine, first, message)
                    feed(engine, second, message)
            live_done.set()
        finally:
            runtime.database.close()

    thread = threading.Thread(target=live_traffic)
    thread.start()
    try:
        report = rebuild(
            engine,
            view,
            archive,
            progress=lambda done, total: reset.set(),
            catch_up_timeout=20,
            batch_size=10,  # the live traffic runs between the replay's batches
        )
    finally:
        reset.set()
        thread.join()
    assert live_done.is_set()

    assert report.applied > 0
    assert [p for p in list_products() if p["sku"] in skus] == command_state(skus)
    assert HeldMessage.select().count() == 0


def test_a_listener_without_a_reset_cannot_be_rebuilt(runtime, archive):
    notifier = listener("notifier", print)
    with pytest.raises(RebuildError, match="declares no reset"):
        rebuild(runtime.engine, notifier, archive)


def test_the_archive_itself_cannot_be_rebuilt(runtime, archive):
    itself = listener(archive.name, archive.handler, reset=lambda: None)
    with pytest.raises(RebuildError, match="archive itself"):
        rebuild(runtime.engine, itself, archive)


def test_a_rebuild_refuses_when_the_archive_never_catches_up_and_changes_nothing(
    runtime, view, archive, sku
):
    for message in run_commands(runtime, [sku], 3, random.Random(1)):
        feed(runtime.engine, view, message)
    before = [p for p in list_products() if p["sku"] == sku]
    with pytest.raises(RebuildError, match=r"did not catch up.*Nothing was changed"):
        rebuild(runtime.engine, view, archive, catch_up_timeout=0.3)
    assert [p for p in list_products() if p["sku"] == sku] == before == command_state([sku])
    assert runtime.storage.positions.applied(view.name, sku) > 0


@pytest.mark.parametrize("kept", ["nothing", "the latest"])
def test_a_rebuild_refuses_when_the_archive_was_pruned_and_changes_nothing(
    runtime, view, archive, sku, kept
):
    skus = [f"{sku}-{n}" for n in range(3)]
    for message in run_commands(runtime, skus, 30, random.Random(3)):
        feed(runtime.engine, archive, message)
        feed(runtime.engine, view, message)
    before = [p for p in list_products() if p["sku"] in skus]
    assert before == command_state(skus) and before
    old = ArchivedMessage.select(ArchivedMessage.id)
    if kept == "the latest":
        old = old.where(ArchivedMessage.position < 3)  # each SKU's first messages
    ArchivedMessage.update(archived_at=datetime.datetime(2000, 1, 1)).where(
        ArchivedMessage.id.in_(old)
    ).execute()
    assert prune(datetime.timedelta(days=1)) > 0
    with pytest.raises(RebuildError, match=r"pruned.*Nothing was changed"):
        rebuild(runtime.engine, view, archive, catch_up_timeout=30)
    assert [p for p in list_products() if p["sku"] in skus] == before
    assert all(runtime.storage.positions.applied(view.name, s) > 0 for s in skus)


def test_a_rebuild_refuses_when_messages_without_a_stream_were_pruned(runtime, archive, sku):
    notified = listener(
        "notified",
        lambda message: None,
        bindings=("Warehouse.Events.NotifiedLowProductQuantity.#",),
        reset=lambda: None,
    )
    commands = runtime.services["warehouse"].commands
    commands.notify_low_product_quantity(sku, 1)
    [message] = runtime.outbox.pending()
    assert message.stream is None
    feed(runtime.engine, archive, message)
    feed(runtime.engine, notified, message)
    ArchivedMessage.update(archived_at=datetime.datetime(2000, 1, 1)).execute()
    prune(datetime.timedelta(days=1))
    with pytest.raises(RebuildError, match=f"messages \\('{message.id}'"):
        rebuild(runtime.engine, notified, archive, catch_up_timeout=30)


def test_the_archive_keeps_messages_as_written_and_pruning_drops_old_ones(
    runtime, archive, commands, sku
):
    commands.increase_product_quantity(sku, 4)
    [message] = runtime.outbox.pending()
    stored = OutboxRecord.get()
    feed(runtime.engine, archive, message)
    archived = ArchivedMessage.get(ArchivedMessage.message_id == message.id)
    assert bytes(archived.payload) == bytes(stored.payload)
    assert (archived.stream, archived.position) == (sku, 1)
    assert prune(datetime.timedelta(days=1)) == 0
    ArchivedMessage.update(archived_at=datetime.datetime(2000, 1, 1)).execute()
    assert prune(datetime.timedelta(days=1)) == 1
    assert ArchivedMessage.select().count() == 0
