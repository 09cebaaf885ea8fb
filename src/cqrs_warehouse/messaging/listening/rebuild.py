"""Rebuilding a listener: empty its state and replay the archive to it, under live traffic.

Used by ``cqrs-warehouse rebuild``. The reset happens in one transaction
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

from ..archive import ArchivedMessage
from ..envelope import envelope_from_record
from ..errors import RebuildError
from ..message import routing_key_for
from ..routing import ListenerSpec
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

    ``progress(done, total)`` is called as it goes. Raises RebuildError if
    the listener declares no reset, or if the archive does not catch up with
    what the listener had applied within ``catch_up_timeout`` seconds.
    """
    if spec.reset is None:
        raise RebuildError(
            f"listener {spec.name} declares no reset, so it cannot be rebuilt "
            "(a listener that runs commands would run them again)"
        )
    if spec.name == archive.name:
        raise RebuildError("the archive itself cannot be rebuilt")
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
    deadline = time.monotonic() + catch_up_timeout
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
                f"applied within {catch_up_timeout:g} s; is the archive listener running?"
            )
        time.sleep(0.2)  # the archive listener is still receiving what the listener had


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
