"""Rebuilding a listener: empty its state and replay the archive to it, under
live traffic; backfilling one: the same replay, without emptying it.

Used by ``cqrs-warehouse rebuild`` and ``backfill``. Before it touches anything, it refuses
when the archive cannot rebuild the listener: when the archive no longer
holds what it once received of the listener's streams and messages (it was
pruned), or when it has not received, within the catch-up timeout, what
the listener has applied (the archive listener is not running). The reset
happens in one transaction
that briefly locks the listener bookkeeping tables and takes a snapshot of
what the listener had applied. Afterwards, live messages of a stream are
held (the listener's positions start again from 0) until the replay
reaches their predecessors, and replayed messages the live actor already
applied are recognised as duplicates. The rebuild ends once the archive,
which may lag behind the listener, covers the snapshot and is replayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from ..archive import ArchivedMessage
from ..envelope import envelope_from_record
from ..errors import RebuildError
from ..message import routing_key_for
from ..routing import ListenerSpec
from ..storage.models import ProcessedMessage, StreamHead, StreamPosition
from ..storage.positions import Snapshot
from .engine import Engine
from .ordering import Outcome

logger = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    replayed: int = 0
    applied: int = 0
    skipped: int = 0
    failed: int = 0


def rebuild(
    engine: Engine,
    spec: ListenerSpec,
    archive: ListenerSpec,
    *,
    progress: Callable[[int, int], None] | None = None,
    catch_up_timeout: float = 60.0,
    batch_size: int = 500,
) -> RebuildReport:
    """Empty ``spec``'s state and replay the archive (kept by ``archive``) to it alone.

    ``progress(done, total)`` is called as it goes. Raises RebuildError,
    changing nothing, if the listener declares no reset, if the archive was
    pruned of what the listener reads, or if it does not catch up with what
    the listener has applied within ``catch_up_timeout`` seconds.
    """
    if spec.reset is None:
        raise RebuildError(
            f"listener {spec.name} declares no reset, so it cannot be rebuilt "
            "(a listener that runs commands would run them again)"
        )
    if spec.name == archive.name:
        raise RebuildError("the archive itself cannot be rebuilt")
    deadline = time.monotonic() + catch_up_timeout
    _refuse_if_pruned(spec, archive, "a rebuild would lose it")
    _wait_until_covered(engine, engine.positions.snapshot(spec.name), spec, archive, deadline)
    with engine.outbox.transaction():
        snapshot = engine.positions.forget(spec.name)
        spec.reset()
    logger.info(
        "listener %s reset: %d streams and %d other messages to replay",
        spec.name,
        len(snapshot.positions),
        len(snapshot.message_ids),
    )
    report = RebuildReport()
    last_id = 0
    deadline = time.monotonic() + catch_up_timeout  # for what it applied since the check
    while True:
        total = ArchivedMessage.select().count()
        while rows := _rows_after(last_id, batch_size):
            last_id = rows[-1].id
            _replay(engine, spec, rows, report)
            if progress is not None:
                progress(report.replayed, max(total, report.replayed))
        if _covered(engine, snapshot, archive.name):
            if not _rows_after(last_id, 1):
                return report
            continue
        if time.monotonic() > deadline:
            raise RebuildError(
                f"the archive ({archive.name}) did not catch up with what {spec.name} had "
                f"applied within {catch_up_timeout:g} s after the reset; is the archive "
                f"listener running? {spec.name} holds what was replayed so far: run the "
                "rebuild again once the archive listener runs"
            )
        time.sleep(0.2)  # the archive listener is still receiving what the listener had


def backfill(
    engine: Engine,
    spec: ListenerSpec,
    archive: ListenerSpec,
    *,
    progress: Callable[[int, int], None] | None = None,
    catch_up_timeout: float = 60.0,
    batch_size: int = 500,
) -> RebuildReport:
    """Apply to ``spec`` every archived message its bindings match, in each
    stream's order, without emptying it: for a listener added after its
    streams began. Call it once the listener's queue is bound.

    A new listener holds the live messages of a stream it has not applied
    from the start (their predecessors are not applied); the replay applies
    those predecessors, which releases them, and whatever the replay and the
    live flow both bring is a duplicate. The replay goes up to what the
    commands had written when it began (the stream heads), which the archive
    must have received first; what is written later reaches the bound queue.
    Raises RebuildError, changing nothing, if the archive does not receive
    what ``spec`` does, was pruned of it, or does not catch up in time.
    """
    if spec.name == archive.name:
        raise RebuildError("the archive itself cannot be backfilled")
    keys = list(StreamHead.select(StreamHead.routing_key).distinct().scalars())
    missed = sorted(k for k in keys if spec.accepts(k) and not archive.accepts(k))
    if missed:
        raise RebuildError(
            f"the archive ({archive.name}) does not receive {', '.join(missed)}, which "
            f"{spec.name} reads. Nothing was changed."
        )
    _refuse_if_pruned(spec, archive, "the backfill would miss it")
    heads = _heads(spec, keys)
    deadline = time.monotonic() + catch_up_timeout
    while behind := _behind(engine, heads, archive.name):
        if time.monotonic() > deadline:
            raise RebuildError(
                f"the archive ({archive.name}) has not received what was written of "
                f"{len(behind)} streams {spec.name} reads ({', '.join(map(repr, behind[:3]))}"
                f"...) within {catch_up_timeout:g} s: is the archive listener running? Was it "
                "added after those streams began? Nothing was changed."
            )
        time.sleep(0.2)  # the archive listener is still receiving what was written
    last = ArchivedMessage.select(peewee.fn.MAX(ArchivedMessage.id)).scalar() or 0
    total = ArchivedMessage.select().where(ArchivedMessage.id <= last).count()
    report, last_id = RebuildReport(), 0
    while rows := [row for row in _rows_after(last_id, batch_size) if row.id <= last]:
        last_id = rows[-1].id
        _replay(engine, spec, rows, report)
        if progress is not None:
            progress(report.replayed, max(total, report.replayed))
    return report


def _heads(spec: ListenerSpec, keys: list[str]) -> dict[str, int]:
    """The last position written in each stream, of the routing keys ``spec`` receives."""
    accepted = [key for key in keys if spec.accepts(key)]
    query = (
        StreamHead.select(StreamHead.stream, peewee.fn.MAX(StreamHead.position))
        .where(StreamHead.routing_key.in_(accepted))
        .group_by(StreamHead.stream)
    )
    return {stream: int(position) for stream, position in query.tuples().iterator()}


def _behind(engine: Engine, heads: dict[str, int], archive_listener: str) -> list[str]:
    """The streams whose ``heads`` the archive has not applied yet."""
    streams = list(heads)
    behind = []
    for start in range(0, len(streams), 500):
        chunk = streams[start : start + 500]
        archived = engine.positions.positions_of(archive_listener, chunk)
        behind += [stream for stream in chunk if archived.get(stream, 0) < heads[stream]]
    return behind


def _refuse_if_pruned(spec: ListenerSpec, archive: ListenerSpec, consequence: str) -> None:
    pruned = pruned_from_archive(spec, archive)
    if pruned:
        raise RebuildError(
            f"the archive ({archive.name}) no longer holds what it received of {pruned}, "
            f"which {spec.name} reads: it was pruned, and {consequence}. Nothing was changed."
        )


def pruned_from_archive(spec: ListenerSpec, archive: ListenerSpec, sample: int = 3) -> str:
    """What the archive received and no longer holds that a replay to ``spec``
    would need, in words ("" if nothing): the streams of ``spec``'s routing
    keys whose first message is gone (the first has no predecessors), and the
    messages without a stream that ``spec`` applied and the archive lost."""
    keys = [
        key
        for key in StreamHead.select(StreamHead.routing_key).distinct().scalars()
        if spec.accepts(key)
    ]
    streams = list(
        StreamPosition.select(StreamPosition.stream)
        .where(
            (StreamPosition.listener == archive.name)
            & peewee.fn.EXISTS(
                StreamHead.select(peewee.SQL("1")).where(
                    (StreamHead.stream == StreamPosition.stream) & StreamHead.routing_key.in_(keys)
                )
            )
            & ~peewee.fn.EXISTS(
                ArchivedMessage.select(peewee.SQL("1")).where(
                    (ArchivedMessage.stream == StreamPosition.stream)
                    & ArchivedMessage.predecessors.is_null()
                )
            )
        )
        .limit(sample)
        .scalars()
    )
    archived = ProcessedMessage.alias()
    messages = list(
        ProcessedMessage.select(ProcessedMessage.message_id)
        .join(
            archived,
            on=(
                (archived.message_id == ProcessedMessage.message_id)
                & (archived.listener == archive.name)
            ),
        )
        .where(
            (ProcessedMessage.listener == spec.name)
            & ~peewee.fn.EXISTS(
                ArchivedMessage.select(peewee.SQL("1")).where(
                    ArchivedMessage.message_id == ProcessedMessage.message_id
                )
            )
        )
        .limit(sample)
        .scalars()
    )
    parts = [
        f"{what} ({', '.join(map(repr, found))}...)"
        for what, found in (("streams", streams), ("messages", messages))
        if found
    ]
    return " and ".join(parts)


def _wait_until_covered(
    engine: Engine, snapshot: Snapshot, spec: ListenerSpec, archive: ListenerSpec, deadline: float
) -> None:
    while not _covered(engine, snapshot, archive.name):
        if time.monotonic() > deadline:
            raise RebuildError(
                f"the archive ({archive.name}) did not catch up with what {spec.name} has "
                "applied in time; is the archive listener running? Nothing was changed."
            )
        time.sleep(0.2)  # the archive listener is still receiving what the listener has


def _rows_after(last_id: int, limit: int) -> list[ArchivedMessage]:
    return list(
        ArchivedMessage.select()
        .where(ArchivedMessage.id > last_id)
        .order_by(ArchivedMessage.id)
        .limit(limit)
    )


def _replay(
    engine: Engine, spec: ListenerSpec, rows: list[ArchivedMessage], report: RebuildReport
) -> None:
    report.replayed += len(rows)
    envelopes = [
        envelope_from_record(row)
        for row in rows
        if spec.accepts(routing_key_for(row.type, row.schema_version))
    ]
    report.skipped += len(rows) - len(envelopes)
    if not envelopes:
        return
    # (Archived messages were verified when the archive received them.)
    for outcome in engine.apply(spec, envelopes, final=True, verified=True):
        if outcome is Outcome.APPLIED:
            report.applied += 1
        elif outcome in (Outcome.DEAD_LETTERED, Outcome.DROPPED):
            report.failed += 1
        else:
            report.skipped += 1


def _covered(engine: Engine, snapshot: Snapshot, archive_listener: str) -> bool:
    """Has the archive received everything the listener had applied?"""
    archived = engine.positions.positions_of(archive_listener, list(snapshot.positions))
    if any(archived.get(stream, 0) < position for stream, position in snapshot.positions.items()):
        return False
    if not snapshot.message_ids:
        return True
    found = (
        ArchivedMessage.select()
        .where(ArchivedMessage.message_id.in_(list(snapshot.message_ids)))
        .count()
    )
    return found == len(snapshot.message_ids)
