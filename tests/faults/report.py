"""The fault suite's report: one row per case, printed at the end of the pytest run
(tests/faults/conftest.py's ``pytest_terminal_summary``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CaseReport:
    case: str
    fault: str
    status: str = "running"
    #: HTTP command attempts by outcome (accepted, refused, unavailable, lost, ...).
    commands: Counter[str] = field(default_factory=Counter)
    #: Attempts without a response (503, lost) that the checks found committed.
    unknown_committed: int = 0
    #: Distinct messages the service published: SKU events and notifications.
    events: int = 0
    notifications: int = 0
    #: Messages the test published itself (copies, reordered, poison).
    injected: int = 0
    #: Rows the drain published and deleted (cqrs_outbox_published_total).
    published: int = 0
    #: Listener deliveries that completed (every cqrs_listener_messages_total outcome).
    deliveries: int = 0
    #: Deliveries beyond one per (listener, message): broker redeliveries, the
    #: drain's re-publishes, Dramatiq retries, injected copies.
    redelivered: int = 0
    deduplicated: int = 0
    held: int = 0
    retried: int = 0
    dead_lettered: int = 0
    notes: list[str] = field(default_factory=list)


REPORTS: list[CaseReport] = []

_COLUMNS = (
    ("case", 28),
    ("cmds", 5),
    ("200", 4),
    ("400", 4),
    ("503", 4),
    ("lost", 4),
    ("other", 5),
    ("?ok", 3),
    ("events", 6),
    ("notif", 5),
    ("inject", 6),
    ("publ", 5),
    ("deliv", 5),
    ("redeliv", 7),
    ("dedup", 5),
    ("held", 4),
    ("retry", 5),
    ("dead", 4),
    ("result", 6),
)


def render(reports: list[CaseReport]) -> list[str]:
    header = " ".join(
        name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(_COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        values = [
            r.case,
            sum(r.commands.values()),
            r.commands.get("accepted", 0),
            r.commands.get("refused", 0),
            r.commands.get("unavailable", 0),
            r.commands.get("lost", 0),
            sum(n for k, n in r.commands.items() if k.startswith("status")),
            r.unknown_committed,
            r.events,
            r.notifications,
            r.injected,
            r.published,
            r.deliveries,
            r.redelivered,
            r.deduplicated,
            r.held,
            r.retried,
            r.dead_lettered,
            r.status,
        ]
        cells = []
        for i, ((_, width), value) in enumerate(zip(_COLUMNS, values, strict=True)):
            text = str(value)
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append(" ".join(cells))
    lines.append("")
    for r in reports:
        lines.append(f"{r.case}: {r.fault}")
        for note in r.notes:
            lines.append(f"    {note}")
    lines += [
        "",
        "cmds: HTTP command attempts; 200/400/503/lost/other: their outcomes (lost: no "
        "response; other: any other status)",
        "?ok: attempts without an answer (a 503, lost, other) that did commit",
        "events: distinct SKU events; notif: NotifiedLowProductQuantity messages",
        "inject: messages the test published itself; publ: rows the drain published and deleted",
        "deliv: listener deliveries completed (every outcome); redeliv: completed deliveries "
        "beyond one per (listener, message): broker redeliveries, re-publishes, retries, "
        "injected copies",
        "dedup/held/retry: listener outcomes duplicate/held/retried; dead: dead letters kept",
    ]
    return lines
