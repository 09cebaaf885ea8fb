"""Waking the drain: a thread in each worker process, as Dramatiq middleware.

Where the database signals commits (PostgreSQL's NOTIFY, see
``storage.signals``), the thread LISTENs and drains itself: a wake-up is then
no query away from the publish, and every notification that arrives while
it drains is coalesced into one more pass, handed the rows they carry
(``Drain.run``). Several processes drain side by side (the drain takes rows
with SKIP LOCKED); one of them leads (it holds a lock on its LISTEN
connection) and drains as soon as notified, the others ``FOLLOWER_DELAY``
later, when there is still something only under a backlog. The leader
publishes the notified rows as they are, without taking them first, while
its notifications are fresh enough that no follower has acted on them yet.
When the leader goes, its lock goes with its connection and another process
takes the lead at its next sweep.

Elsewhere (SQLite) a commit wakes the drain by sending the drain actor a
message (``Outbox.wake_drain``), and this thread only sweeps.

The sweep, every ``sweep_interval`` seconds on every platform, wakes the
drain even without a signal (a lost wake-up costs at most that long) and
runs ``on_sweep`` (the runtime passes the resend of stuck held messages).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from .errors import DatabaseUnavailableError
from .storage.signals import Signals, Subscription

logger = logging.getLogger(__name__)

#: Seconds a drain that does not lead waits after a notification.
FOLLOWER_DELAY = 0.05


class DrainWaker(Middleware):
    def __init__(
        self,
        *,
        database: Any,
        signals: Signals,
        drain: Callable[..., Any],
        send_to_drain_actor: Callable[[], Any],
        drain_queue: str,
        channel: str,
        sweep_interval: float,
        on_sweep: Callable[[], Any] | None = None,
    ) -> None:
        self.database = database
        self.signals = signals
        self.drain = drain
        self.send_to_drain_actor = send_to_drain_actor
        self.drain_queue = drain_queue
        self.channel = channel
        self.sweep_interval = sweep_interval
        self.on_sweep = on_sweep
        self.drains_here = True  # whether this process consumes drain_queue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        # A worker started with --queues that leave out the drain's queue
        # does not drain (the processes that consume it do). Dramatiq keeps
        # those queues in an attribute it does not document (pinned by
        # tests/unit/test_library_pins.py).
        queues = getattr(worker, "consumer_whitelist", None)
        self.drains_here = not queues or self.drain_queue in queues
        self.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drain-waker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    subscription = self.signals.subscribe(self.channel)
                    if subscription is None:
                        self._sweep(here=False)  # whatever waited while no worker ran
                        while not self._stop.wait(self.sweep_interval):
                            self._sweep(here=False)
                    else:
                        try:
                            self._follow(subscription)
                        finally:
                            subscription.close()
                except Exception:
                    logger.warning("drain waker failed; retrying in a second", exc_info=True)
                    self._stop.wait(1.0)
        finally:
            # The connection the drain and the sweep used in this thread.
            if not self.database.is_closed():
                self.database.close()

    def _follow(self, subscription: Subscription) -> None:
        leading = self.drains_here and subscription.try_lock(self.channel)
        self._wake(here=True)  # anything committed before LISTEN took effect
        waited = time.monotonic()  # when this thread last returned from a wait
        later: list[tuple[float, str]] = []  # a follower's notifications, as they came
        acted = 0.0  # when it last acted on some

        def until_due() -> float:
            """Seconds until the follower may act on the oldest of ``later``."""
            return max(0.0, max(later[0][0], acted) + FOLLOWER_DELAY - time.monotonic())

        while not self._stop.is_set():
            # No notification that a wait returns came in before the last wait
            # returned: none is older than ``away``, or it came while it waited.
            away = time.monotonic() - waited
            notified = subscription.wait(until_due() if later else self.sweep_interval)
            waited = time.monotonic()
            if leading and notified:
                # Coalesced: what arrived meanwhile is this wake-up.
                notified += subscription.wait(0)
                waited = time.monotonic()
                # With a margin, no follower has acted on these yet: the
                # drain may publish their rows without taking them first.
                self._wake(here=True, notified=notified, as_notified=away < FOLLOWER_DELAY / 2)
            elif not leading and (notified or later):
                # A follower acts on a notification FOLLOWER_DELAY after it
                # came, on what the leader has not published by then, and at
                # most every FOLLOWER_DELAY: on all that came that long before.
                later += [(waited, payload) for payload in notified]
                self._stop.wait(until_due())
                acted = time.monotonic()
                later += [(acted, payload) for payload in subscription.wait(0)]
                waited = time.monotonic()
                due = [payload for came, payload in later if acted - came >= FOLLOWER_DELAY]
                del later[: len(due)]
                if due:  # (none if it is stopping)
                    self._wake(here=True, notified=due)
            else:
                leading = leading or (self.drains_here and subscription.try_lock(self.channel))
                self._sweep(here=True)

    def _sweep(self, *, here: bool) -> None:
        self._wake(here=here)
        if self.on_sweep is None:
            return
        try:
            self.on_sweep()
        except Exception:
            logger.warning("the periodic sweep failed", exc_info=True)

    def _wake(self, *, here: bool, notified: Sequence[str] = (), as_notified: bool = False) -> None:
        """Run the drain in this thread (``here``), or send the drain actor a message;
        ``notified``: the payloads of the notifications that woke it, whose rows
        it publishes as they are if ``as_notified``."""
        if not self.drains_here:
            return
        try:
            if here:
                self.drain(notified, as_notified=as_notified)
            else:
                self.send_to_drain_actor()
        except Exception as error:
            # The rows stay in the outbox; the next wake-up publishes them.
            logger.warning(
                "waking the outbox drain failed; the next wake-up retries", exc_info=True
            )
            if isinstance(error, DatabaseUnavailableError):
                self.database.discard_broken_connection()
