"""Writes a backlog into the outbox through the service's own commands, in-process.

``python -m bench.fill_outbox START STOP SKUS PART PARTS`` with the service's
environment (DATABASE_URL, BROKER_URL, ...): builds the service as its API
does (``cqrs_warehouse.runtime.build``; nothing is published, no worker
runs) and runs the warehouse's commands number START to STOP-1 whose SKU
index modulo PARTS is PART, so that PARTS processes can write one backlog
side by side.

Command k acts on SKU ``k % SKUS``: the SKU's first command increases it by
a large stock, the later ones alternate shipping and increasing by 1, so no
shipment fails and none triggers the low-quantity notifier. Consecutive
events belong to different SKUs, as they would under traffic spread over
many products. Commands are grouped 500 to a transaction
(``runtime.outbox.transaction()``; each command still runs its own inner
one, a savepoint): the events and the state they write are the commands',
only the commits are fewer.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from functools import partial

from cqrs_warehouse.messaging.errors import DatabaseUnavailableError
from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.warehouse.commands import Commands

from .loadgen import SEED_QUANTITY, sku_name

SKU_PREFIX = "backlog"
COMMANDS_PER_TRANSACTION = 500


def run_command(commands: Commands, index: int, skus: int) -> None:
    sku = sku_name(SKU_PREFIX, index % skus)
    if index < skus:
        commands.increase_product_quantity(sku, SEED_QUANTITY)
    elif (index // skus) % 2:
        commands.ship_product_quantity(sku, 1)
    else:
        commands.increase_product_quantity(sku, 1)


def fill(runtime: Runtime, start: int, stop: int, skus: int, part: int, parts: int) -> int:
    mine = [k for k in range(start, stop) if (k % skus) % parts == part]
    for offset in range(0, len(mine), COMMANDS_PER_TRANSACTION):
        batch = mine[offset : offset + COMMANDS_PER_TRANSACTION]
        _with_reconnect(runtime, partial(_run_batch, runtime, batch, skus))
    return len(mine)


def _run_batch(runtime: Runtime, batch: list[int], skus: int) -> None:
    commands = runtime.services["warehouse"].commands
    # A bulk load, not traffic: no statement or lock timeout (SET LOCAL).
    with runtime.outbox.transaction(), runtime.database.unbounded():
        for index in batch:
            run_command(commands, index, skus)


def _with_reconnect(runtime: Runtime, action: Callable[[], None], attempts: int = 60) -> None:
    """Run ``action`` (one transaction), again after a lost connection: the
    PostgreSQL on this machine is shared, and may be restarted by others' tests.
    A batch that was rolled back leaves nothing behind; the suite checks the
    event count of the result."""
    for attempt in range(attempts):
        try:
            action()
            return
        except DatabaseUnavailableError:
            if attempt == attempts - 1:
                raise
            runtime.database.discard_broken_connection()
            time.sleep(1)  # the server restarting; at most ``attempts`` times


def main() -> None:
    start, stop, skus, part, parts = (int(arg) for arg in sys.argv[1:6])
    logging.disable(logging.WARNING)  # no line per command: this is set-up, not the test
    runtime = build()
    runtime.database.connect()
    try:
        written = fill(runtime, start, stop, skus, part, parts)
    finally:
        runtime.database.close()
    print(written)


if __name__ == "__main__":
    main()
