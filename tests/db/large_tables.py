"""The messaging tables at a production size, for the plan tests (test_plans.py).

``build_template`` migrates a new database, fills every table a little and
ANALYZEs it (the statistics of a young installation), then grows each table
to its full size without ANALYZE: a million streams for three listeners'
positions and two routing keys' heads, two million archived events, a million
processed-message records, idempotency keys, held messages, and an outbox of
100 live rows behind 25,000 dead ones. Copies of it are the tests' databases:
as it is (statistics stale), or ANALYZEd (fresh).

Rows come from ``generate_series``; each table's indexes are dropped while it
grows and built again after, as the migrations made them (a sorted build is
several times faster than a million index insertions).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2.extensions

from cqrs_warehouse import migrations
from cqrs_warehouse.runtime import build
from cqrs_warehouse.slices import load_slices
from tests.conftest import SLICES, settings_for
from tests.support.services import Postgres

LISTENERS = ("archive", "low_product_quantity_notifier", "products_view")
ROUTING_KEYS = (
    "Warehouse.Events.ProductQuantityIncreased.v1",
    "Warehouse.Events.ProductQuantityShipped.v1",
)
STREAMS = 1_000_000
ARCHIVED = 2_000_000
PROCESSED = 1_000_000
KEYS = 200_000
HELD = 10_000
DEAD_OUTBOX_ROWS = 25_000
LIVE_OUTBOX_ROWS = 100
OUTBOX = "messaging.messaging_outbox"


def stream(number: int) -> str:
    """The name of the loaded stream ``number`` (1 to STREAMS)."""
    return f"SKU-{number:08d}"


def _sku(expression: str) -> str:
    return f"'SKU-' || lpad(({expression})::text, 8, '0')"


def _message_id(expression: str, tag: str = "0") -> str:
    return f"'00000000-0000-4000-800{tag}-' || lpad(({expression})::text, 12, '0')"


def _rows(scale: int, first: int = 0) -> list[tuple[str, str]]:
    """(table, INSERT ... SELECT) that fill each table; ``scale`` divides the
    counts, rows are numbered from ``first`` + 1."""
    listeners = ", ".join(f"'{name}'" for name in LISTENERS)
    keys = ", ".join(f"'{key}'" for key in ROUTING_KEYS)
    streams, archived = STREAMS // scale, ARCHIVED // scale
    m = "messaging."
    return [
        (
            "messaging_stream_positions",
            f"INSERT INTO {m}messaging_stream_positions (listener, stream, position, held) "
            f"SELECT l, {_sku('s')}, 1 + s % 17, 0 "
            f"FROM unnest(ARRAY[{listeners}]) l, "
            f"generate_series({first} + 1, {first} + {streams}) s",
        ),
        (
            "messaging_stream_heads",
            f"INSERT INTO {m}messaging_stream_heads (stream, routing_key, position) "
            f"SELECT {_sku('s')}, k, 1 + s % 17 "
            f"FROM generate_series({first} + 1, {first} + {streams}) s, unnest(ARRAY[{keys}]) k",
        ),
        (
            "messaging_archive",
            f"INSERT INTO {m}messaging_archive (message_id, type, schema_version, payload, "
            "stream, position, archived_at) "
            f"SELECT {_message_id('i')}, 'Warehouse.Events.ProductQuantityIncreased', 1, "
            f"'\\x0a534b55'::bytea, {_sku(f'1 + i % {streams}')}, 1 + i / {streams}, "
            "timestamp '2026-01-01' + i * interval '10 ms' "
            f"FROM generate_series({first} + 1, {first} + {archived}) i",
        ),
        (
            "messaging_processed_messages",
            f"INSERT INTO {m}messaging_processed_messages (listener, message_id) "
            f"SELECT 'products_view', {_message_id('i', '1')} "
            f"FROM generate_series({first} + 1, {first} + {PROCESSED // scale}) i",
        ),
        (
            "messaging_idempotency_keys",
            f"INSERT INTO {m}messaging_idempotency_keys (key, request, status, body, expires_at) "
            "SELECT 'key-' || i, md5(i::text), 200, '{}', "
            "timestamp '2026-01-01' + i * interval '1 s' "
            f"FROM generate_series({first} + 1, {first} + {KEYS // scale}) i",
        ),
        (
            "messaging_held_messages",
            f"INSERT INTO {m}messaging_held_messages (listener, stream, position, message_id, "
            "type, schema_version, payload, required, held_at) "
            f"SELECT 'low_product_quantity_notifier', {_sku('i * 7')}, 100, "
            f"{_message_id('i', '2')}, 'Warehouse.Events.ProductQuantityShipped', 1, "
            "'\\x00'::bytea, 99, timestamp '2026-01-01' + i * interval '1 s' "
            f"FROM generate_series({first} + 1, {first} + {HELD // scale}) i",
        ),
    ]


def _outbox(live: int, dead: int) -> str:
    """``live`` rows waiting in the outbox behind ``dead`` deleted ones."""
    table = OUTBOX
    return (
        f"INSERT INTO {table} (message_id, type, schema_version, payload, stream, position, "
        f"created_at) SELECT {_message_id('i', '3')}, "
        f"'Warehouse.Events.ProductQuantityIncreased', 1, '\\x00'::bytea, {_sku('i')}, 1, "
        f"now() FROM generate_series(1, {live + dead}) i; "
        f"DELETE FROM {table} WHERE id IN "
        f"(SELECT id FROM {table} ORDER BY id LIMIT {dead})"
    )


def build_template(postgres: Postgres) -> str:
    """A new database (see the module's docstring); returns its name."""
    url = postgres.create()
    name = url.rsplit("/", 1)[1]
    runtime = build(settings_for(url), embedded=True)
    migrations.migrate(runtime.database, load_slices(SLICES))
    runtime.database.close()
    connection = postgres.connect(name)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off; SET maintenance_work_mem = '256MB'")
            # A young installation, analyzed: a few rows in each table, the outbox empty.
            for _, insert in _rows(scale=10_000, first=10 * STREAMS):
                cursor.execute(insert)
            cursor.execute("ANALYZE")
            for table, insert in _rows(scale=1):
                cursor.execute("BEGIN")
                rebuild = drop_indexes(cursor, f"messaging.{table}")
                cursor.execute(insert)
                for statement in rebuild:
                    cursor.execute(statement)
                cursor.execute("COMMIT")
            cursor.execute(_outbox(LIVE_OUTBOX_ROWS, DEAD_OUTBOX_ROWS))
    finally:
        connection.close()
    return name


def drop_indexes(cursor: psycopg2.extensions.cursor, table: str) -> list[str]:
    """Drop the indexes of ``table`` (as SQL, with its schema), its primary key's
    constraint included; returns the statements that build them again, as they were."""
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, "
        "pg_get_constraintdef(c.oid) FROM pg_index i "
        "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = %s::regclass",
        (table,),
    )
    rebuild: list[str] = []
    for index, definition, constraint, constraint_definition in cursor.fetchall():
        if constraint:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
            rebuild.append(
                f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {constraint_definition}'
            )
        else:
            cursor.execute(f"DROP INDEX {index}")
            rebuild.append(definition)
    return rebuild


def plans_in(notices: list[Any]) -> list[dict[str, Any]]:
    """The plans auto_explain sent as LOG notices (log_format json)."""
    plans = []
    for notice in notices:
        _, marker, text = str(notice).partition("plan:\n")
        if marker:
            plans.append(json.loads(text))
    return plans
