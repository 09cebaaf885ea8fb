"""What each listener remembers, in its own transaction: the ids it applied,
its position in each stream, and the messages it holds until their
predecessors are applied. Used by the listener engine and its tools.

``Positions`` is the interface and the SQLite form; ``PostgresPositions``
claims a batch's streams in two or three statements and can claim ahead of
a handler (docs/decisions/0003-claiming-ahead.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import peewee

from ..message import Message
from .models import HeldMessage, ProcessedMessage, StreamPosition, qualified_name
from .statements import Statement


class Run(NamedTuple):
    """Consecutive messages of one stream in a batch, each the next the
    listener needs after the one before: they can be claimed at once."""

    stream: str
    required: int  # the position that must be applied before the first
    first: int  # the first's position
    last: int  # the last's position


class Snapshot(NamedTuple):
    """What a listener had applied or held when its state was forgotten (a rebuild)."""

    positions: dict[str, int]  # stream -> the last position applied
    message_ids: set[str]  # messages applied without a stream, and messages held


class Positions:
    #: Whether ``claim_ahead`` is possible: the claim then travels with the
    #: handler's first statement or its COMMIT.
    claims_ahead = False

    def mark_applied(self, listener: str, message_id: str) -> bool:
        """Record that ``listener`` applied ``message_id`` (a message without a
        stream); False if it already had.

        A concurrent delivery of the same id waits on the insert until the
        first commits, then conflicts.
        """
        inserted = (
            ProcessedMessage.insert(listener=listener, message_id=message_id)
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )
        return bool(inserted)

    def claim(self, listener: str, stream: str, position: int, required: int) -> int | None:
        """Take ``position`` as applied if it is next (the position applied is
        at least ``required`` and below it); the held count, or None if not.
        The stream's row stays locked until the transaction ends."""
        if required == 0:
            rows = _CLAIM_NEW_STREAM_OR_FREE.rows(listener, stream, position)
        else:
            rows = _CLAIM_AFTER_PREDECESSOR.rows(listener, stream, position, required)
        return int(rows[0][0]) if rows else None

    def claim_ahead(self, listener: str, stream: str, position: int, required: int) -> None:
        """``claim``, sent with the transaction's next statement, which then
        fails (RefusedClaimError) unless it holds. Only where ``claims_ahead``."""
        raise NotImplementedError("this database cannot claim ahead")

    def claim_runs(self, listener: str, runs: Sequence[Run]) -> dict[str, int]:
        """``claim`` for several streams at once (one run each): the position of
        each run's stream becomes its last if the run's first message is next;
        returns the held count of each stream claimed. Rows are locked in
        stream order, as one message at a time would lock them, so that
        batches of other workers cannot deadlock with this one."""
        claimed = {}
        for run in runs:
            applied, held = self.lock(listener, run.stream)
            if run.required <= applied < run.first:
                self.set(listener, run.stream, run.last, held)
                claimed[run.stream] = held
        return claimed

    def lock(self, listener: str, stream: str) -> tuple[int, int]:
        """(position applied, messages held) of ``listener`` in ``stream``, locked
        until the transaction ends (created at 0 if new)."""
        [(position, held)] = _LOCK.rows(listener, stream)
        return int(position), int(held)

    def set(self, listener: str, stream: str, position: int, held: int) -> None:
        _SET.run(listener, stream, position, max(0, held))

    def applied(self, listener: str, stream: str) -> int:
        """The last position of ``stream`` that ``listener`` applied (0 if none)."""
        rows = _APPLIED.rows(listener, stream)
        return int(rows[0][0]) if rows else 0

    def hold(
        self,
        listener: str,
        message: Message,
        required: int,
        payload: bytes,
        correlation_id: str | None,
    ) -> None:
        """Keep ``message`` (``payload``: its Avro binary in the version the
        listener reads) until ``required`` is applied. The stream's row is
        already locked by this transaction."""
        assert message.stream is not None and message.position is not None
        inserted = (
            HeldMessage.insert(
                listener=listener,
                stream=message.stream,
                position=message.position,
                message_id=message.id,
                type=message.type,
                schema_version=message.schema_version,
                written_version=message.written_version,
                payload=payload,
                correlation_id=correlation_id,
                traceparent=message.traceparent,
                tracestate=message.tracestate,
                predecessors=json.dumps(message.predecessors) if message.predecessors else None,
                required=required,
            )
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )
        if inserted:
            StreamPosition.update(held_count=StreamPosition.held_count + 1).where(
                (StreamPosition.listener == listener) & (StreamPosition.stream == message.stream)
            ).execute()

    def next_held(self, listener: str, stream: str) -> HeldMessage | None:
        """The earliest message ``listener`` holds in ``stream``."""
        return (
            HeldMessage.select()
            .where((HeldMessage.listener == listener) & (HeldMessage.stream == stream))
            .order_by(HeldMessage.position)
            .first()
        )

    def release(self, listener: str, stream: str, position: int) -> None:
        """Forget a held message (it was resent or dead-lettered).

        The stream's held count is left as it is: touching its row here would
        take the locks in the opposite order to a listener's transaction (row,
        then held messages) and deadlock with it. The count is a hint that
        only spares the common case a query; the next apply in the stream,
        finding nothing held, sets it back to 0.
        """
        HeldMessage.delete().where(
            (HeldMessage.listener == listener)
            & (HeldMessage.stream == stream)
            & (HeldMessage.position == position)
        ).execute()

    def ready_held(self, limit: int = 500) -> list[HeldMessage]:
        """Held messages whose predecessors are applied but which are still held
        (their handler failed when they were up next); oldest first."""
        return list(self._ready_held(limit))

    def snapshot(self, listener: str) -> Snapshot:
        """What ``listener`` has applied and held."""
        positions = {
            stream: int(position)
            for stream, position in StreamPosition.select(
                StreamPosition.stream, StreamPosition.position
            )
            .where(StreamPosition.listener == listener)
            .tuples()
            .iterator()
        }
        message_ids = {
            str(row[0])
            for model in (ProcessedMessage, HeldMessage)
            for row in model.select(model.message_id)
            .where(model.listener == listener)
            .tuples()
            .iterator()
        }
        return Snapshot(positions, message_ids)

    def forget(self, listener: str) -> Snapshot:
        """Forget everything ``listener`` applied and held, in the open
        transaction; returns what it was. No listener writes its bookkeeping
        meanwhile (on SQLite the transaction holds the write lock)."""
        self._lock_tables()
        snapshot = self.snapshot(listener)
        for model in (StreamPosition, HeldMessage, ProcessedMessage):
            model.delete().where(model.listener == listener).execute()
        return snapshot

    def positions_of(self, listener: str, streams: Sequence[str]) -> dict[str, int]:
        """The position ``listener`` applied in each of ``streams`` it has one in."""
        query = StreamPosition.select(StreamPosition.stream, StreamPosition.position).where(
            (StreamPosition.listener == listener) & StreamPosition.stream.in_(list(streams))
        )
        return {stream: int(position) for stream, position in query.tuples().iterator()}

    def _ready_held(self, limit: int) -> Any:
        return (
            HeldMessage.select(HeldMessage)
            .join(
                StreamPosition,
                on=(
                    (StreamPosition.listener == HeldMessage.listener)
                    & (StreamPosition.stream == HeldMessage.stream)
                    & (HeldMessage.required <= StreamPosition.position)
                    & (HeldMessage.position > StreamPosition.position)
                ),
            )
            .order_by(HeldMessage.held_at)
            .limit(limit)
        )

    def _lock_tables(self) -> None:
        """Nothing: SQLite's transaction holds the database's write lock."""


# One statement: advance the listener's position in the stream to the
# message's if every earlier message it receives is applied and the message
# is new; returns the count of held messages.
_CLAIM_NEW_STREAM_OR_FREE = Statement(
    lambda listener, stream, position: (
        StreamPosition.insert(listener=listener, stream=stream, position=position, held_count=0)
        .on_conflict(
            conflict_target=[StreamPosition.listener, StreamPosition.stream],
            update={StreamPosition.position: peewee.EXCLUDED.position},
            where=(StreamPosition.position < peewee.EXCLUDED.position),
        )
        .returning(StreamPosition.held_count)
    ),
    "\x01listener",
    "\x01stream",
    10**15 + 7,
)
_CLAIM_AFTER_PREDECESSOR = Statement(
    lambda listener, stream, position, required: (
        StreamPosition.update(position=position)
        .where(
            (StreamPosition.listener == listener)
            & (StreamPosition.stream == stream)
            & (StreamPosition.position >= required)
            & (StreamPosition.position < position)
        )
        .returning(StreamPosition.held_count)
    ),
    "\x01listener",
    "\x01stream",
    10**15 + 7,
    10**15 + 11,
)
_LOCK = Statement(
    lambda listener, stream: (
        StreamPosition.insert(listener=listener, stream=stream, position=0, held_count=0)
        .on_conflict(
            conflict_target=[StreamPosition.listener, StreamPosition.stream],
            update={StreamPosition.position: StreamPosition.position},
        )
        .returning(StreamPosition.position, StreamPosition.held_count)
    ),
    "\x01listener",
    "\x01stream",
)
_SET = Statement(
    lambda listener, stream, position, held: StreamPosition.update(
        position=position, held_count=held
    ).where((StreamPosition.listener == listener) & (StreamPosition.stream == stream)),
    "\x01listener",
    "\x01stream",
    10**15 + 7,
    10**15 + 11,
)
_APPLIED = Statement(
    lambda listener, stream: StreamPosition.select(StreamPosition.position).where(
        (StreamPosition.listener == listener) & (StreamPosition.stream == stream)
    ),
    "\x01listener",
    "\x01stream",
)


class PostgresPositions(Positions):
    def __init__(self, database: Any) -> None:
        self.database = database
        self.claims_ahead = bool(database.defers)

    def claim_ahead(self, listener: str, stream: str, position: int, required: int) -> None:
        # (FROM names the prepared statement after the function: cqrs_<n>_claim_next.)
        self.database.execute_prepared(
            'SELECT * FROM "messaging".claim_next(%s::varchar, %s::varchar, %s, %s)',
            [listener, stream, position, required],
            defer=True,
        )

    def claim_runs(self, listener: str, runs: Sequence[Run]) -> dict[str, int]:
        """Two or three statements whatever the number of runs: lock the
        streams' rows (in code-point order, as a batch is sorted), advance
        those whose run is next, insert the new streams."""
        if not runs:
            return {}
        table = qualified_name(StreamPosition)
        current = {
            stream: (int(position), int(held))
            for stream, position, held in self.database.execute_prepared(
                f"SELECT stream, position, held FROM {table} "
                "WHERE listener = %(listener)s AND stream = ANY(%(streams)s) "
                'ORDER BY stream COLLATE "C" FOR UPDATE',
                {"listener": listener, "streams": [run.stream for run in runs]},
            ).fetchall()
        }
        claimed, advanced, new = {}, [], []
        for run in runs:
            if run.stream in current:
                applied, held = current[run.stream]
                if run.required <= applied < run.first:
                    claimed[run.stream] = held
                    advanced.append(run)
            elif run.required == 0:
                new.append(run)
        if advanced:
            self.database.execute_prepared(
                f"UPDATE {table} AS p SET position = c.position "
                "FROM unnest(%(streams)s::varchar[], %(positions)s::bigint[]) "
                "AS c(stream, position) WHERE p.listener = %(listener)s AND p.stream = c.stream",
                {
                    "listener": listener,
                    "streams": [run.stream for run in advanced],
                    "positions": [run.last for run in advanced],
                },
            )
        if new:
            # A stream that another transaction creates meanwhile is left out
            # (after waiting for it): that message then takes the one-by-one path.
            for (stream,) in self.database.execute_prepared(
                f"INSERT INTO {table} (listener, stream, position, held) "
                "SELECT %(listener)s::varchar, c.stream, c.position, 0 "
                "FROM unnest(%(streams)s::varchar[], %(positions)s::bigint[]) "
                'AS c(stream, position) ORDER BY c.stream COLLATE "C" '
                "ON CONFLICT (listener, stream) DO NOTHING RETURNING stream",
                {
                    "listener": listener,
                    "streams": [run.stream for run in new],
                    "positions": [run.last for run in new],
                },
            ).fetchall():
                claimed[stream] = 0
        return claimed

    def _ready_held(self, limit: int) -> Any:
        # Several workers' sweeps take different rows.
        return super()._ready_held(limit).for_update(of=HeldMessage, skip_locked=True)

    def _lock_tables(self) -> None:
        names = ", ".join(
            qualified_name(model) for model in (StreamPosition, HeldMessage, ProcessedMessage)
        )
        self.database.execute_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
