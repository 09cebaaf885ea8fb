"""Writes a backlog into the outbox through the service's own commands, in-process.

``python -m bench.fill_outbox START STOP SKUS PART PARTS`` with the service's
environment (DATABASE_URL, BROKER_URL, ...): bootstraps the service as its
API does (``cqrs_warehouse.bootstrap``; nothing is published, no worker
runs) and runs commands number START to STOP-1 whose SKU index modulo PARTS
is PART, so that PARTS processes can write one backlog side by side.

Command k acts on SKU ``k % SKUS``: the SKU's first command increases it by
a large stock, the later ones alternate shipping and increasing by 1, so no
shipment fails and none triggers the low-quantity notifier. Consecutive
events belong to different SKUs, as they would under traffic spread over
many products. Commands are grouped 500 to a transaction (each still runs
its own inner one, a savepoint): the events and the state they write are
the commands', only the commits are fewer.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from functools import partial

import peewee

from cqrs_warehouse.bootstrap import bootstrap
from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.database import database
from cqrs_warehouse.settings import Settings
from cqrs_warehouse.warehouse.commands import increase_product_quantity, ship_product_quantity

from .loadgen import SEED_QUANTITY, sku_name

SKU_PREFIX = "backlog"
COMMANDS_PER_TRANSACTION = 500


def run_command(index: int, skus: int) -> None:
    sku = sku_name(SKU_PREFIX, index % skus)
    if index < skus:
        increase_product_quantity(sku, SEED_QUANTITY)
    elif (index // skus) % 2:
        ship_product_quantity(sku, 1)
    else:
        increase_product_quantity(sku, 1)


def fill(start: int, stop: int, skus: int, part: int, parts: int) -> int:
    mine = [k for k in range(start, stop) if (k % skus) % parts == part]
    for offset in range(0, len(mine), COMMANDS_PER_TRANSACTION):
        batch = mine[offset : offset + COMMANDS_PER_TRANSACTION]
        _with_reconnect(partial(_run_batch, batch, skus))
    return len(mine)


def _run_batch(batch: list[int], skus: int) -> None:
    with outbox.transaction():
        for index in batch:
            run_command(index, skus)


def _with_reconnect(action: Callable[[], None], attempts: int = 60) -> None:
    """Run ``action`` (one transaction), again after a lost connection: the
    PostgreSQL on this machine is shared, and may be restarted by others' tests.
    A batch that was rolled back leaves nothing behind; the suite checks the
    event count of the result."""
    for attempt in range(attempts):
        try:
            action()
            return
        except (peewee.OperationalError, peewee.InterfaceError):
            if attempt == attempts - 1:
                raise
            if not database.is_closed():
                with contextlib.suppress(Exception):
                    database.close()
            time.sleep(1)
            with contextlib.suppress(peewee.OperationalError):
                database.connect(reuse_if_open=True)


def main() -> None:
    start, stop, skus, part, parts = (int(arg) for arg in sys.argv[1:6])
    logging.disable(logging.WARNING)  # no line per command: this is set-up, not the test
    runtime = bootstrap(Settings.from_env())
    runtime.database.connect()
    try:
        written = fill(start, stop, skus, part, parts)
    finally:
        runtime.database.close()
    print(written)


if __name__ == "__main__":
    main()
