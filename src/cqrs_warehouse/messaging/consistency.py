"""Read-your-writes: consistency tokens, and waiting until a listener has applied one.

A command's response carries a token naming the stream position of the
event it committed. A reader that presents it is answered only once the
listener it reads from has applied that position; listeners record their
positions in the same transaction as their writes, so the check is exact
across processes.

Waiting does not poll in a loop: the listener runner signals every position
it applies, within the process (``signal_applied``) and, on PostgreSQL,
through NOTIFY on the ``applied`` channel, which one thread per process
LISTENs to. A waiter re-checks the database only when woken, plus a slow
safety re-check in case a notification was lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import select
import threading
import time
from collections import defaultdict

from .database import database, execute_prepared, is_postgres
from .errors import MessagingError

logger = logging.getLogger(__name__)

_SEPARATOR = "\x1f"


class InvalidConsistencyTokenError(MessagingError):
    """A consistency token that this service did not issue."""


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


def applied_position(listener: str, stream: str) -> int:
    from .listener_state import StreamPosition

    row = StreamPosition.get_or_none(
        (StreamPosition.listener == listener) & (StreamPosition.stream == stream)
    )
    return 0 if row is None else int(row.position)


def notify_applied(channel: str, listener: str, stream: str, position: int) -> None:
    """Inside the listener's transaction: PostgreSQL delivers it on commit."""
    if is_postgres(database.obj):
        payload = _SEPARATOR.join((listener, stream, str(position)))
        # Sent with the COMMIT, like the notification itself.
        execute_prepared("SELECT pg_notify(%s, %s)", (channel, payload), defer=True)


class _Waiters:
    """Threads waiting for (listener, stream) positions, woken by signals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], set[threading.Event]] = defaultdict(set)

    def add(self, listener: str, stream: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiting[(listener, stream)].add(event)
        return event

    def remove(self, listener: str, stream: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._waiting.get((listener, stream))
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[(listener, stream)]

    def wake(self, listener: str, stream: str) -> None:
        with self._lock:
            for event in self._waiting.get((listener, stream), ()):
                event.set()


_local = _Waiters()


def signal_applied(listener: str, stream: str, position: int) -> None:
    """After the listener's commit: wake waiters in this process."""
    _local.wake(listener, stream)


class ConsistencyGate:
    """Waits, at most ``timeout`` seconds, until ``listener`` applied a token."""

    def __init__(
        self,
        *,
        listener: str,
        timeout: float,
        database_url: str | None = None,
        channel: str = "applied",
        recheck: float = 0.5,
    ) -> None:
        self.listener = listener
        self.timeout = timeout
        self.database_url = database_url
        self.channel = channel
        self.recheck = recheck
        self._listening = False
        self._start_lock = threading.Lock()

    def wait_for(self, token: str) -> bool:
        """True once the listener has applied the token's position; False on timeout."""
        stream, position = decode_token(token)
        self._ensure_listening()
        event = _local.add(self.listener, stream)
        try:
            deadline = time.monotonic() + self.timeout
            while applied_position(self.listener, stream) < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, self.recheck))
                event.clear()
            return True
        finally:
            _local.remove(self.listener, stream, event)

    def _ensure_listening(self) -> None:
        if self._listening or self.database_url is None or not is_postgres(database.obj):
            return
        with self._start_lock:
            if not self._listening:
                threading.Thread(target=self._listen, name="applied-listener", daemon=True).start()
                self._listening = True

    def _listen(self) -> None:
        from playhouse.db_url import connect as connect_url

        while True:
            listener_db = connect_url(self.database_url)
            try:
                connection = listener_db.connection()
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute(f'LISTEN "{self.channel}"')
                while True:
                    ready, _, _ = select.select([connection], [], [], 30)
                    if not ready:
                        continue
                    connection.poll()
                    while connection.notifies:
                        notice = connection.notifies.pop(0)
                        listener, stream, _ = notice.payload.split(_SEPARATOR, 2)
                        _local.wake(listener, stream)
            except Exception:
                logger.warning("lost the LISTEN connection for applied positions", exc_info=True)
                time.sleep(1)  # back off before reconnecting; waiters re-check meanwhile
            finally:
                try:
                    listener_db.close()
                except Exception:
                    logger.debug("closing the LISTEN connection failed", exc_info=True)
