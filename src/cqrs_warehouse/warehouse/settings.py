"""The warehouse's own settings, read from the environment with the core's."""

from __future__ import annotations

from dataclasses import dataclass

from cqrs_warehouse.settings import number, variable


@dataclass(frozen=True)
class WarehouseSettings:
    #: The notifier notifies when a shipment leaves a SKU at or below this.
    low_quantity_threshold: int = variable("LOW_QUANTITY_THRESHOLD", 5, number(int, minimum=0))
