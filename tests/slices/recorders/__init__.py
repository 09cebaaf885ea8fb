"""A slice of the tests' own: listeners that record what they receive.

- ``watch``: every message it receives (bind it to ``#``), to check what was
  published and in what order;
- ``record_shipment``: a user's own listener, a plain function in a module
  outside the project, bound to shipments;
- ``picky``, ``picky_all``, ``picky_other``: fail for the SKUs a test refuses
  them (``RefusedSku``), to make dead letters the way production does.

Add it with SLICES=cqrs_warehouse.warehouse,tests.slices.recorders.
"""

from pathlib import Path

from cqrs_warehouse.slices import Slice, Store

from .listeners import (
    PickyApplied,
    ReceivedShipment,
    RefusedSku,
    WatchedMessage,
    watched_messages,
)

SLICE = Slice(
    name="recorders",
    stores=(
        Store(
            "recorders",
            "recorders",
            Path(__file__).parent / "migrations",
            (WatchedMessage, ReceivedShipment, RefusedSku, PickyApplied),
        ),
    ),
)

__all__ = [
    "SLICE",
    "PickyApplied",
    "ReceivedShipment",
    "RefusedSku",
    "WatchedMessage",
    "watched_messages",
]
