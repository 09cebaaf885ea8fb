"""Read-your-writes: consistency tokens, and waiting until a listener has applied one.

A command's response carries a token naming the stream position of the
event it committed. A reader that presents it is answered only once the
listener it reads from has applied that position; listeners record their
positions in the same transaction as their writes, so the check is exact
across processes.

Waits are bounded: a token naming a position beyond the last one the
commands issued for its stream is refused at once (it would never be
applied), and at most ``max_waiting`` reads of a process wait at a time;
one more is refused at once (``ConsistencyBusyError``), so waiting reads
never take every thread of the API from writes and health checks.

Waiting does not poll in a loop: the listener engine announces each
position it applies, to this process's waiters once committed and, where
the database signals (PostgreSQL's NOTIFY, sent with the commit), to every
process, where one thread LISTENs. A waiter re-checks the database only when
woken, plus a slow safety re-check in case a notification was lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .errors import ConsistencyBusyError, InvalidConsistencyTokenError
from .storage.positions import Positions
from .storage.signals import Signals

logger = logging.getLogger(__name__)

_SEPARATOR = "\x1f"
# Built once: json.dumps with separators builds an encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def encode_token(stream: str, position: int) -> str:
    raw = _COMPACT_JSON.encode([stream, position]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        stream, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidConsistencyTokenError(f"not a consistency token: {token[:80]!r}") from None
    if not isinstance(stream, str) or not isinstance(position, int) or position < 1:
        raise InvalidConsistencyTokenError(f"not a consistency token: {token[:80]!r}")
    return stream, position


class Consistency:
    """Announces applied positions, and lets readers wait for them.

    ``listeners``: those whose handlers readers wait on (``read_your_writes``);
    only their positions are announced. ``issued(stream)``: the last position
    the commands issued in ``stream`` (0 if none).
    """

    def __init__(
        self,
        database: Any,
        positions: Positions,
        signals: Signals,
        *,
        channel: str,
        issued: Callable[[str], int],
        max_waiting: int,
        listeners: Collection[str] = (),
        recheck: float = 0.5,
    ) -> None:
        self.database = database
        self.positions = positions
        self.signals = signals
        self.channel = channel
        self.issued = issued
        self.max_waiting = max_waiting
        self.listeners = frozenset(listeners)
        self.recheck = recheck
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], set[threading.Event]] = defaultdict(set)
        self._count = 0
        self._following = False

    def announce(self, listener: str, applied: Mapping[str, int], after_commit: Any) -> None:
        """Inside ``listener``'s transaction, which applied ``applied`` (stream ->
        position): tell waiting readers once it commits. ``after_commit`` is the
        transaction's (``Outbox.after_commit``)."""
        if listener not in self.listeners or not applied:
            return
        for stream, position in applied.items():
            self.signals.notify(
                self.database, self.channel, _SEPARATOR.join((listener, stream, str(position)))
            )
        streams = list(applied)
        after_commit(lambda: self._wake(listener, streams))

    def wait_for(self, listener: str, token: str, timeout: float) -> bool:
        """True once ``listener`` has applied the token's position; False after
        ``timeout`` s. Raises InvalidConsistencyTokenError for a position never
        issued, ConsistencyBusyError when ``max_waiting`` reads wait already."""
        stream, position = decode_token(token)
        if self.positions.applied(listener, stream) >= position:
            return True
        last = self.issued(stream)
        if position > last:
            raise InvalidConsistencyTokenError(
                f"the token names position {position} of stream {stream[:80]!r}, but the "
                f"commands have issued {last} there: it was not issued by this service"
            )
        self._ensure_following()
        event = threading.Event()
        key = (listener, stream)
        with self._lock:
            if self._count >= self.max_waiting:
                raise ConsistencyBusyError(
                    f"{self._count} reads wait for their tokens in this process already"
                )
            self._count += 1
            self._waiting[key].add(event)
        try:
            deadline = time.monotonic() + timeout
            while self.positions.applied(listener, stream) < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, self.recheck))
                event.clear()
            return True
        finally:
            with self._lock:
                self._count -= 1
                waiting = self._waiting.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiting[key]

    def waiting(self) -> int:
        """How many readers wait now."""
        with self._lock:
            return self._count

    def _wake(self, listener: str, streams: Collection[str]) -> None:
        with self._lock:
            for stream in streams:
                for event in self._waiting.get((listener, stream), ()):
                    event.set()

    def _ensure_following(self) -> None:
        if self._following:
            return
        with self._lock:
            if not self._following:
                threading.Thread(target=self._follow, name="applied-positions", daemon=True).start()
                self._following = True

    def _follow(self) -> None:
        while True:
            try:
                subscription = self.signals.subscribe(self.channel)
                if subscription is None:
                    return  # nothing crosses processes: the safety re-checks do
                try:
                    while True:
                        for payload in subscription.wait(30):
                            listener, stream, _ = payload.split(_SEPARATOR, 2)
                            self._wake(listener, [stream])
                finally:
                    subscription.close()
            except Exception:
                logger.warning("lost the LISTEN connection for applied positions", exc_info=True)
                time.sleep(1)  # before reconnecting; waiters re-check meanwhile
