"""Storage: everything that differs between SQLite and PostgreSQL, behind one
interface per concern. Opened by the runtime; the rest of the service sees
only these interfaces and the messaging error tree.

- ``database``: the peewee database (driver errors translated at its calls);
- ``outbox``: append and take the outbox's rows (``outbox.OutboxStore``);
- ``positions``: what each listener applied and holds (``positions.Positions``);
- ``signals``: LISTEN/NOTIFY between processes, where there is such a thing;
- ``statements``: ``Statement`` and ``Bulk``, queries written once for every database.
"""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database, SqliteDatabase, Timeouts, open_database
from .models import Model
from .outbox import OutboxStore, PostgresOutboxStore
from .positions import Positions, PostgresPositions
from .signals import PostgresSignals, Signals
from .statements import Bulk, Statement

__all__ = ["Bulk", "Database", "Model", "Statement", "Storage", "Timeouts", "open_storage"]


@dataclass(frozen=True)
class Storage:
    database: Database
    outbox: OutboxStore
    positions: Positions
    signals: Signals


def open_storage(
    database_url: str, *, notify_channel: str, timeouts: Timeouts | None = None
) -> Storage:
    """The storage a ``DATABASE_URL`` names (nothing connects until used).
    ``notify_channel``: where a commit that appended to the outbox wakes the drain;
    ``timeouts``: PostgreSQL's, on every connection (LISTEN's too)."""
    database = open_database(database_url, timeouts)
    if isinstance(database, SqliteDatabase):
        return Storage(database, OutboxStore(), Positions(), Signals())
    return Storage(
        database,
        PostgresOutboxStore(database, notify_channel),
        PostgresPositions(database),
        PostgresSignals(database_url, timeouts),
    )
