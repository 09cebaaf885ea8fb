"""What the warehouse slice builds for a runtime: its settings and its commands.

The runtime calls ``build`` with the slice's context; the handlers and the
routes are given what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from cqrs_warehouse.slices import SliceContext

from .commands import Commands
from .settings import WarehouseSettings


@dataclass(frozen=True)
class Warehouse:
    settings: WarehouseSettings
    commands: Commands


def build(context: SliceContext) -> Warehouse:
    return Warehouse(settings=context.settings, commands=Commands(context.outbox))
