"""What the service's processes wrote, read from the test process through
``Installation.reading()``; and the dead letters the picky listeners of the
recorders slice make on demand (``refuse``), the way production makes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import HeldMessage, OutboxRecord
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from cqrs_warehouse.warehouse.processors.low_quantity import quantity_of
from cqrs_warehouse.warehouse.views.products import ProductView
from tests.slices.recorders import PickyApplied, ReceivedShipment, RefusedSku, watched_messages
from tests.support.installation import Installation
from tests.support.waiting import eventually

INCREASED = PRODUCT_QUANTITY_INCREASED
SHIPPED = PRODUCT_QUANTITY_SHIPPED
NOTIFIED = NOTIFIED_LOW_PRODUCT_QUANTITY

#: The deadline of the waits on the processes (workers boot, then catch up).
TIMEOUT = 30.0


def wait(assertion: Any, *, timeout: float = TIMEOUT) -> Any:
    """``eventually`` with the processes' deadline."""
    return eventually(assertion, timeout=timeout, interval=0.1)


# --- what the listeners received ---------------------------------------------


def messages(
    installation: Installation, sku: str, message_type: str | None = None
) -> list[Message]:
    """Every message the watcher received about ``sku``, in the order received."""
    with installation.reading():
        return [m for m in watched_messages(message_type) if m.payload.get("sku") == sku]


def all_messages(installation: Installation) -> list[Message]:
    with installation.reading():
        return watched_messages()


def received_by_shipment_recorder(installation: Installation, sku: str) -> list[ReceivedShipment]:
    with installation.reading():
        query = ReceivedShipment.select().where(ReceivedShipment.sku == sku)
        return list(query.order_by(ReceivedShipment.message_id))


def notifier_quantity(installation: Installation, sku: str) -> int:
    with installation.reading():
        return quantity_of(sku)


def outbox_size(installation: Installation) -> int:
    with installation.reading():
        return int(OutboxRecord.select().count())


def all_output(installation: Installation) -> str:
    """Everything the installation's processes wrote."""
    return "\n".join(service.output() for service in installation.services)


def normalized(items: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``items`` in a canonical order, to compare them regardless of arrival order."""
    return sorted(items, key=lambda item: (item[0], json.dumps(item[1], sort_keys=True)))


def summary(received: Iterable[Message]) -> list[tuple[str, dict[str, Any]]]:
    """(short type, payload) of each message, normalized, for readable comparisons."""
    return normalized((m.type.rsplit(".", 1)[-1], m.payload) for m in received)


def one(items: Sequence[Any], what: str = "item") -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items!r}"
    return items[0]


# --- the command state and the view -----------------------------------------------


def command_state(installation: Installation, skus: Sequence[str] | None = None) -> dict[str, int]:
    with installation.reading():
        query = ProductStock.select()
        if skus is not None:
            query = query.where(ProductStock.sku.in_(list(skus)))
        return {row.sku: int(row.quantity) for row in query}


def view_state(installation: Installation, skus: Sequence[str] | None = None) -> dict[str, int]:
    with installation.reading():
        query = ProductView.select()
        if skus is not None:
            query = query.where(ProductView.sku.in_(list(skus)))
        return {row.sku: int(row.quantity) for row in query}


def wait_until_view_matches_commands(
    installation: Installation, timeout: float = TIMEOUT
) -> dict[str, int]:
    """Until every event is published and applied: view == command state."""

    def settled() -> dict[str, int]:
        state = command_state(installation)
        assert outbox_size(installation) == 0, "the outbox still holds messages"
        view = view_state(installation)
        assert view == state, {
            sku: (state.get(sku), view.get(sku))
            for sku in set(state) | set(view)
            if state.get(sku) != view.get(sku)
        }
        return state

    return wait(settled, timeout=timeout)


# --- dead letters made by the picky listeners ---------------------------------------


def refuse(installation: Installation, listener: str, sku: str) -> None:
    with installation.reading():
        RefusedSku.insert(listener=listener, sku=sku).on_conflict_ignore().execute()


def accept(installation: Installation, listener: str, sku: str) -> None:
    with installation.reading():
        RefusedSku.delete().where(
            (RefusedSku.listener == listener) & (RefusedSku.sku == sku)
        ).execute()


def letter_of(installation: Installation, listener: str, sku: str) -> DeadLetter | None:
    with installation.reading():
        return DeadLetter.get_or_none(
            (DeadLetter.listener == listener) & (DeadLetter.stream == sku)
        )


def wait_for_letter(installation: Installation, listener: str, sku: str) -> DeadLetter:
    def stored() -> DeadLetter:
        letter = letter_of(installation, listener, sku)
        assert letter is not None, f"no dead letter of {listener} for {sku} yet"
        return letter

    return wait(stored)


def held_positions(installation: Installation, listener: str, sku: str) -> list[int]:
    with installation.reading():
        query = HeldMessage.select().where(
            (HeldMessage.listener == listener) & (HeldMessage.stream == sku)
        )
        return sorted(int(row.position) for row in query)


def wait_for_held(
    installation: Installation, listener: str, sku: str, positions: list[int]
) -> None:
    def held() -> None:
        assert held_positions(installation, listener, sku) == positions

    wait(held)


def applied_quantities(installation: Installation, listener: str, sku: str) -> list[int]:
    with installation.reading():
        query = PickyApplied.select().where(
            (PickyApplied.listener == listener) & (PickyApplied.sku == sku)
        )
        return [int(row.quantity) for row in query.order_by(PickyApplied.id)]


def applied_position(installation: Installation, listener: str, sku: str) -> int:
    with installation.reading() as runtime:
        return runtime.storage.positions.applied(listener, sku)
