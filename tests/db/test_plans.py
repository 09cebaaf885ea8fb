"""Each hot statement keeps an index path on tables of production size,
whatever the statistics say (docs/decisions/0022-tables-at-scale.md).

The code's own calls run on a copy of ``large_tables``' database, inside a
transaction that is rolled back, with auto_explain logging the plan of every
statement they send, nested ones (``claim_next``) included, to the client:
the plans PostgreSQL really used, for the SQL and parameters the code sends.
Each runs once with the plan a prepared statement gets after its fifth
execution (generic) and once with a plan for its values (custom), on
statistics that are fresh and on statistics taken when the tables were
small (stale). No plan may read a messaging table by a sequential scan.
Nothing is timed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from cqrs_warehouse.messaging.archive import Archive
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.retention import Retention
from cqrs_warehouse.messaging.storage.outbox import _TAKE_SETTINGS, LAST_ID
from cqrs_warehouse.messaging.storage.positions import Run
from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.web import idempotency
from tests.conftest import settings_for
from tests.db import large_tables
from tests.db.large_tables import stream
from tests.support.services import Postgres

NOW = datetime.datetime(2026, 6, 1)


class _Rollback(Exception):
    pass


@pytest.fixture(scope="session")
def large_template(postgres: Postgres) -> str:
    return large_tables.build_template(postgres)


@pytest.fixture(params=["fresh", "stale"])
def large_runtime(
    request: pytest.FixtureRequest, postgres: Postgres, large_template: str
) -> Iterator[Runtime]:
    url = postgres.create(template=large_template, strategy="FILE_COPY")
    if request.param == "fresh":
        connection = postgres.connect(url.rsplit("/", 1)[1])
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        connection.close()
    runtime = build(settings_for(url), embedded=True)
    yield runtime
    runtime.database.close()
    postgres.drop(url.rsplit("/", 1)[1])


def _message(number: int, position: int, predecessors: dict[str, int] | None) -> Message:
    return Message(
        id=f"00000000-0000-4000-9000-{number:012d}",
        type="Warehouse.Events.ProductQuantityShipped",
        schema_version=1,
        payload={"sku": stream(number), "quantity": 1},
        stream=stream(number),
        position=position,
        predecessors=predecessors,
    )


def _hot_paths(runtime: Runtime) -> None:
    """Every statement of the hot paths, as the code sends it, with values
    that find rows and values that do not."""
    positions, store = runtime.storage.positions, runtime.storage.outbox
    view, notifier = "products_view", "low_product_quantity_notifier"
    shipped = "Warehouse.Events.ProductQuantityShipped.v1"
    # A listener's claims: one stream, new or after its predecessor; ahead of
    # the handler (messaging.claim_next); a batch's streams at once.
    positions.claim(view, stream(5), 18, 0)
    positions.claim(view, "SKU-new-1", 1, 0)
    positions.claim(view, stream(6), 8, 7)
    positions.claim_ahead(view, stream(7), 9, 8)
    positions.claim_ahead(view, stream(8), 30, 0)
    positions.claim_runs(
        view,
        [Run(stream(n), 1 + n % 17, 2 + n % 17, 3 + n % 17) for n in range(100, 150)]
        + [Run(f"SKU-new-{n}", 0, 1, 1) for n in range(2, 30)],
    )
    positions.lock(notifier, stream(9))
    positions.set(notifier, stream(9), 11, 0)
    positions.applied(view, stream(10))  # the consistency check
    positions.positions_of(view, [stream(n) for n in range(200, 210)])
    positions.mark_applied(view, "00000000-0000-4000-8001-000000000042")
    positions.mark_applied(view, "00000000-0000-4000-9999-000000000001")
    # Held messages: one held, the earliest of a stream, one let go. (Not the
    # sweep's ``ready_held``: it looks at every held message, by design.)
    positions.hold(notifier, _message(11, 40, {shipped: 39}), 39, b"\x00", None)
    positions.next_held(notifier, stream(7))
    positions.next_held(notifier, stream(12))
    positions.release(notifier, stream(7), 100)
    # A command's append (the heads read and advanced), the last position
    # issued (the consistency check).
    message = _message(13, 20, None)
    store.append(message, b"\x00", None)
    store.last_position(stream(14))
    # The idempotency key's claim, its answer and the cleanup of expired keys.
    idempotency._CLAIM.rows("key-77", "r" * 64, NOW + datetime.timedelta(days=1), NOW)
    idempotency._CLAIM.rows("key-new", "r" * 64, NOW + datetime.timedelta(days=1), NOW)
    idempotency._ANSWER.run(200, "{}", None, "key-new")
    idempotency._DELETE_EXPIRED.run(NOW)
    # The archive's insert (deferred: it goes with the next statement).
    Archive(SimpleNamespace(registry=runtime.registry)).apply_batch(
        [_message(n, 5, None) for n in range(300, 310)]
    )
    positions.applied(view, stream(15))
    # The sweep's pruning of processed-message records and of the archive.
    Retention(runtime.database, processed=7 * 86400, archive=30 * 86400).prune()
    # Last, as they turn sequential scans off for the rest of their
    # transaction: the drain's take, and its deletion of rows it published as
    # notified (deferred: it goes with the next statement).
    taken = store.take(500)
    store.take_published([row.id + 1_000 for row in taken[:20]])
    store.last_position(stream(14))


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    node = plan.get("Plan", plan)
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name", "").startswith(
        "messaging_"
    ):
        found.append(node["Relation Name"])
    for child in node.get("Plans", []):
        found += _seq_scans(child)
    return found


@pytest.mark.parametrize("plan_cache_mode", ["force_generic_plan", "force_custom_plan"])
def test_hot_statements_keep_an_index_path(large_runtime: Runtime, plan_cache_mode: str) -> None:
    database = large_runtime.database
    with database.connection_context():
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_format = 'json'",
            "SET client_min_messages = 'log'",
            f"SET plan_cache_mode = '{plan_cache_mode}'",
        ):
            database.execute_sql(setting)
        notices: list[Any] = []
        database.connection().notices = notices
        with pytest.raises(_Rollback), database.atomic():
            _hot_paths(large_runtime)
            raise _Rollback
        plans = large_tables.plans_in(notices)

    texts = [plan["Query Text"] for plan in plans]
    # Every hot statement was planned (the test cannot pass on what it did not see).
    for fragment in (
        "ON CONFLICT",  # the single-stream claim of a new stream
        "claim_next",
        "stream = ANY(",  # the batch claim
        "unnest(",  # the batch's advance and new streams
        "messaging_processed_messages",
        "messaging_held_messages",
        "messaging_outbox",
        "messaging_stream_heads",
        "messaging_idempotency_keys",
        "messaging_archive",
        "ctid = ANY(",  # the sweep's pruning
        "WHERE id = ANY(",  # the deletion of rows published as notified
    ):
        assert any(fragment in text for text in texts), f"no statement with {fragment!r}"
    scanned = [
        f"{', '.join(tables)} in: {' '.join(text.split())[:300]}"
        for text, plan in zip(texts, plans, strict=True)
        if (tables := _seq_scans(plan))
    ]
    assert not scanned, "sequential scans:\n" + "\n".join(scanned)


def test_the_drains_take_from_a_notified_id_does_not_walk_the_rows_taken_before_it(
    large_runtime: Runtime,
) -> None:
    """The outbox's index keeps the entries of taken rows until a vacuum (25,000
    here, before 100 waiting rows): a take from the start reads their pages,
    one from the id the drain was notified of does not (messaging.drain)."""
    database = large_runtime.database
    take = large_runtime.storage.outbox._statements().take
    with database.connection_context():
        # (This lookup walks them too: the index has no other way to the first row.)
        (first,) = database.execute_sql(f"SELECT min(id) FROM {large_tables.OUTBOX}").fetchone()
        pages = {}
        for start in (0, first):
            with pytest.raises(_Rollback), database.atomic():
                database.execute_sql(_TAKE_SETTINGS.strip().rstrip(";"))
                cursor = database.execute_sql(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {take}", (start, LAST_ID, 500)
                )
                plan = cursor.fetchone()[0][0]["Plan"]
                assert plan["Actual Rows"] == large_tables.LIVE_OUTBOX_ROWS
                pages[start] = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
                raise _Rollback
    # Each taken row costs a few pages (its lock, its lookup, its delete);
    # from the start, the taken rows' entries add a leaf page per few hundred.
    assert pages[first] <= 8 * large_tables.LIVE_OUTBOX_ROWS, pages
    assert pages[0] - pages[first] >= large_tables.DEAD_OUTBOX_ROWS // 500, pages
