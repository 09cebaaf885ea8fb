"""The checks every fault case ends with, written once.

``assert_converged`` waits (with a deadline) until the service has caught up
and then holds it to the delivery guarantees, per SKU:

- command state (ProductStock) == products view == notifier state == the
  fold of the SKU's events in position order, and those events are exactly
  the commands the load generator saw accepted (200: each response names its
  message id and position) plus commands whose answer it never got (a 503,
  a dropped connection) and which did commit: every event that no 200
  accounts for must match one such unanswered command (same SKU, action and
  quantity), never a refused (400) one;
- the NotifiedLowProductQuantity notifications are exactly those of serial
  processing of the SKU's events (a shipment leaving it at or below the
  threshold notifies, nothing else does);
- nothing applied twice: every listener's stream position equals the SKU's
  version, the watcher recorded each message id once, and each notification
  is recorded once per listener;
- nothing lost: the outbox is empty, nothing is held, every accepted
  command's event was applied, and no dead letters but the expected ones.

Everything is read through the models, bound to the installation's database
(``with installation.reading():``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.consistency import decode_token
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.errors import InvalidConsistencyTokenError, TransientStorageError
from cqrs_warehouse.messaging.inprocess import Delivery
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.storage.models import (
    HeldMessage,
    OutboxRecord,
    ProcessedMessage,
    StreamPosition,
)
from cqrs_warehouse.runtime import Runtime
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.processors.low_quantity import NotifierProduct
from cqrs_warehouse.warehouse.views.products import ProductView
from tests.faults.load import INSUFFICIENT, Attempt
from tests.faults.report import CaseReport
from tests.slices.recorders import WatchedMessage
from tests.support.waiting import eventually

INCREASED = "Warehouse.Events.ProductQuantityIncreased"
SHIPPED = "Warehouse.Events.ProductQuantityShipped"
NOTIFIED = "Warehouse.Events.NotifiedLowProductQuantity"
EVENT_OF_ACTION = {"increase": INCREASED, "ship": SHIPPED}
THRESHOLD = 5


class Readable(Protocol):
    """An installation (tests/support/installation.py), or anything else whose
    ``reading()`` binds the models to its database, in a connection."""

    def reading(self) -> AbstractContextManager[Runtime]: ...


@dataclass(frozen=True)
class Event:
    message_id: str
    type: str
    payload: dict[str, Any]
    stream: str | None
    position: int | None
    correlation_id: str | None


@dataclass
class State:
    """What the service's tables hold, read in one go through the models."""

    stock: dict[str, tuple[int, int]]  # sku -> (quantity, version)
    view: dict[str, int]
    notifier: dict[str, int]
    positions: dict[tuple[str, str], int]  # (listener, stream) -> position
    processed: Counter[tuple[str, str]]  # (listener, message id) -> rows
    held: list[tuple[str, str, int]]
    outbox: int
    pending_deliveries: int
    dead_letters: list[DeadLetter]
    #: One per row of the event source (the watcher, else the archive), in row order.
    events: list[Event]
    archived_ids: set[str]


def read_state(installation: Readable, *, source: str = "watcher") -> State:
    """Read everything, or raise AssertionError while the database is unreachable.

    ``source`` names where the published messages are read: the ``watcher``
    listener's table, or the ``archive`` (the embedded default has no watcher).
    """
    try:
        with installation.reading() as runtime:
            return _read_state(runtime.registry, source)
    except TransientStorageError as error:
        raise AssertionError(f"the database is unreachable: {error!r}") from error


def _read_state(registry: SchemaRegistry, source: str) -> State:
    correlation = {
        row.message_id: row.correlation_id
        for row in ArchivedMessage.select(
            ArchivedMessage.message_id, ArchivedMessage.correlation_id
        )
    }
    if source == "watcher":
        rows = WatchedMessage.select().order_by(WatchedMessage.id)
        events = [
            Event(
                r.message_id,
                r.type,
                json.loads(r.payload),
                r.stream,
                r.position,
                correlation.get(r.message_id),
            )
            for r in rows
        ]
    else:
        rows = ArchivedMessage.select().order_by(ArchivedMessage.id)
        events = [
            Event(
                r.message_id,
                r.type,
                registry.decode(r.type, r.schema_version, bytes(r.payload)),
                r.stream,
                r.position,
                r.correlation_id,
            )
            for r in rows
        ]
    processed: Counter[tuple[str, str]] = Counter(
        (r.listener, r.message_id) for r in ProcessedMessage.select()
    )
    return State(
        stock={r.sku: (int(r.quantity), int(r.version)) for r in ProductStock.select()},
        view={r.sku: int(r.quantity) for r in ProductView.select()},
        notifier={r.sku: int(r.quantity) for r in NotifierProduct.select()},
        positions={(r.listener, r.stream): int(r.position) for r in StreamPosition.select()},
        processed=processed,
        held=[(r.listener, r.stream, int(r.position)) for r in HeldMessage.select()],
        outbox=int(OutboxRecord.select().count()),
        pending_deliveries=int(Delivery.select().count()),
        dead_letters=list(DeadLetter.select().order_by(DeadLetter.id)),
        events=events,
        archived_ids=set(correlation),
    )


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    events: int = 0
    notifications: int = 0
    unknown_committed: int = 0
    distinct_deliveries: int = 0

    def problem(self, text: str) -> None:
        self.problems.append(text)


def serial_notifications(events: Sequence[Event], threshold: int = THRESHOLD) -> int:
    """How many notifications serial processing of one SKU's events (in position order) makes."""
    quantity, notifications = 0, 0
    for event in sorted(events, key=lambda e: e.position or 0):
        if event.type == INCREASED:
            quantity += event.payload["quantity"]
        elif event.type == SHIPPED:
            quantity -= event.payload["quantity"]
            if quantity <= threshold:
                notifications += 1
    return notifications


def verify(
    state: State,
    *,
    skus: Iterable[str],
    attempts: Sequence[Attempt],
    listeners: Sequence[str],
    expected_dead_letters: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    threshold: int = THRESHOLD,
) -> Verdict:
    verdict = Verdict()
    problem = verdict.problem
    skus = list(skus)

    # --- nothing lost, nothing stuck ---------------------------------------------------
    if state.outbox:
        problem(f"the outbox still holds {state.outbox} rows")
    if state.pending_deliveries:
        problem(f"{state.pending_deliveries} in-process deliveries are still pending")
    if state.held:
        problem(f"messages still held: {state.held[:10]}")
    letters = {(d.listener, d.message_id) for d in state.dead_letters}
    if letters != set(expected_dead_letters):
        unexpected = [
            (d.listener, d.message_id, d.type, d.error[:200])
            for d in state.dead_letters
            if (d.listener, d.message_id) not in expected_dead_letters
        ]
        missing = sorted(set(expected_dead_letters) - letters)
        problem(f"dead letters: unexpected {unexpected[:10]}, missing {missing[:10]}")

    # --- nothing applied twice at the watcher / archive -----------------------------------
    unarchived = {e.message_id for e in state.events} - state.archived_ids
    if unarchived:
        problem(f"messages the archive listener never kept: {sorted(unarchived)[:10]}")
    per_id = Counter(e.message_id for e in state.events)
    twice = [(mid, n) for mid, n in per_id.items() if n > 1]
    if twice:
        problem(f"messages recorded more than once by the event listener: {twice[:10]}")

    events_by_sku: dict[str, list[Event]] = defaultdict(list)
    notifications_by_sku: Counter[str] = Counter()
    notification_ids: list[str] = []
    for event in state.events:
        if event.type == NOTIFIED:
            notifications_by_sku[event.payload["sku"]] += 1
            notification_ids.append(event.message_id)
        elif event.stream is not None:
            events_by_sku[event.stream].append(event)

    # --- per SKU ------------------------------------------------------------------
    for sku in skus:
        quantity, version = state.stock.get(sku, (0, 0))
        events = sorted(events_by_sku.get(sku, []), key=lambda e: e.position or 0)
        positions = [e.position for e in events]
        if positions != list(range(1, version + 1)):
            problem(
                f"{sku}: command version {version} but the events received have positions "
                f"{_short(positions)}"
            )
        folded, lowest = 0, 0
        for event in events:
            if event.payload.get("sku") != sku:
                problem(f"{sku}: event {event.message_id} carries sku {event.payload.get('sku')}")
            sign = 1 if event.type == INCREASED else -1 if event.type == SHIPPED else 0
            if not sign:
                problem(f"{sku}: unexpected event type {event.type} in its stream")
            folded += sign * event.payload["quantity"]
            lowest = min(lowest, folded)
        if lowest < 0:
            problem(f"{sku}: the fold of its events goes negative ({lowest})")
        if folded != quantity:
            problem(f"{sku}: command state {quantity} != fold of its events {folded}")
        if state.view.get(sku, 0) != quantity:
            problem(f"{sku}: products view {state.view.get(sku)} != command state {quantity}")
        if state.notifier.get(sku, 0) != quantity:
            problem(f"{sku}: notifier {state.notifier.get(sku)} != command state {quantity}")
        for listener in listeners:
            applied = state.positions.get((listener, sku), 0)
            if applied != version:
                problem(f"{sku}: listener {listener} is at position {applied}, version {version}")
        expected = serial_notifications(events, threshold)
        if notifications_by_sku[sku] != expected:
            problem(
                f"{sku}: {notifications_by_sku[sku]} notifications, serial processing of its "
                f"{len(events)} events makes {expected}"
            )
        verdict.events += len(events)
        verdict.notifications += notifications_by_sku[sku]

    # --- every notification applied exactly once by every listener ---------------------
    for message_id in notification_ids:
        for listener in listeners:
            if state.processed[(listener, message_id)] != 1:
                problem(f"notification {message_id} not recorded once by {listener}")
                break
    for (listener, message_id), rows in state.processed.items():
        if rows != 1:
            problem(f"{listener} recorded {message_id} {rows} times")

    # --- the HTTP commands: every event is an accepted command's, or one whose response was lost
    sku_set = set(skus)
    by_id = {e.message_id: e for e in state.events}
    explained: set[str] = set()
    # Attempts without an answer (503, no response): each may or may not have committed.
    unanswered: dict[str, Counter[tuple[str, int]]] = defaultdict(Counter)
    for attempt in attempts:
        command = attempt.command
        if command.sku not in sku_set:
            continue
        if attempt.accepted:
            body = attempt.body if isinstance(attempt.body, dict) else {}
            event = by_id.get(str(body.get("message_id")))
            if event is None:
                problem(f"accepted {command} (message {body.get('message_id')}) never arrived")
                continue
            if (
                event.type != EVENT_OF_ACTION[command.action]
                or event.payload.get("quantity") != command.quantity
                or event.stream != command.sku
            ):
                problem(f"accepted {command} answered with message {event}")
            if _token(body.get("consistency_token")) != (event.stream, event.position):
                problem(f"accepted {command}: token {body.get('consistency_token')} but {event}")
            if event.message_id in explained:
                problem(f"two accepted commands answered with message {event.message_id}")
            explained.add(event.message_id)
        elif attempt.known_not_committed:
            title = attempt.body.get("title") if isinstance(attempt.body, dict) else None
            if command.action != "ship" or title != INSUFFICIENT:
                problem(f"{command} refused with {attempt.body!r}")
        else:
            unanswered[command.sku][(EVENT_OF_ACTION[command.action], command.quantity)] += 1
    for sku in sku_set:
        for event in events_by_sku.get(sku, []):
            if event.message_id in explained:
                continue
            key = (event.type, event.payload.get("quantity"))
            if unanswered[sku][key] > 0:
                # A command whose answer was lost did commit: it counts like an accepted one.
                unanswered[sku][key] -= 1
                verdict.unknown_committed += 1
            else:
                problem(
                    f"{sku}: event {event.message_id} ({event.type} {key[1]}, position "
                    f"{event.position}) is no accepted command's, nor any unanswered one's"
                )

    # --- distinct (listener, message) deliveries, for the report ---------------------------
    verdict.distinct_deliveries = (
        sum(p for (listener, _), p in state.positions.items() if listener in listeners)
        + sum(n for (listener, _), n in state.processed.items() if listener in listeners)
        + len(state.dead_letters)
    )
    return verdict


def _token(token: Any) -> tuple[str, int] | None:
    try:
        return decode_token(str(token))
    except InvalidConsistencyTokenError:
        return None


def _short(values: Sequence[Any], limit: int = 30) -> str:
    text = ", ".join(map(str, values[:limit]))
    return f"[{text}{', ...' if len(values) > limit else ''}] ({len(values)})"


def assert_converged(
    installation: Readable,
    *,
    skus: Iterable[str],
    attempts: Callable[[], Sequence[Attempt]] | Sequence[Attempt],
    listeners: Sequence[str],
    expected_dead_letters: set[tuple[str, str]] | None = None,
    source: str = "watcher",
    timeout: float = 90.0,
    report: CaseReport | None = None,
) -> tuple[State, Verdict]:
    """Wait until the service has converged, then hold it to every guarantee."""
    skus = list(skus)

    def check() -> tuple[State, Verdict]:
        state = read_state(installation, source=source)
        verdict = verify(
            state,
            skus=skus,
            attempts=attempts() if callable(attempts) else attempts,
            listeners=listeners,
            expected_dead_letters=expected_dead_letters or set(),
        )
        if verdict.problems:
            shown = "\n  ".join(verdict.problems[:40])
            more = len(verdict.problems) - 40
            raise AssertionError(
                f"{len(verdict.problems)} problem(s):\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
            )
        return state, verdict

    state, verdict = eventually(check, timeout=timeout, interval=0.25)
    if report is not None:
        report.events = verdict.events
        report.notifications = verdict.notifications
        report.unknown_committed = verdict.unknown_committed
        report.dead_lettered = len(state.dead_letters)
    return state, verdict


def fill_outcomes(report: CaseReport, outcomes: dict[str, int], distinct: int) -> None:
    """Listener outcome totals (from the workers' metrics or logs) into ``report``."""
    report.deliveries = sum(outcomes.values())
    report.deduplicated = outcomes.get("duplicate", 0)
    report.held = outcomes.get("held", 0)
    report.retried = outcomes.get("retried", 0)
    report.redelivered = report.deliveries - distinct
