"""The load generator: concurrent clients sending increase and ship commands over HTTP.

Every attempt is recorded, with the X-Request-ID it was sent with (the
service keeps it as the correlation id of the event the command commits). An
accepted attempt's response names its event (message id and position); an
attempt without an answer (a 503, a dropped connection) may or may not have
committed, and the checks resolve it from the events the service published.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

INSUFFICIENT = "Insufficient quantity on hand."


@dataclass(frozen=True)
class Command:
    sku: str
    action: str  # "increase" or "ship"
    quantity: int


@dataclass
class Attempt:
    """One HTTP request of a command (a retried command makes several)."""

    command: Command
    request_id: str
    sent_at: float = field(default_factory=time.monotonic)
    status: int | None = None
    body: Any = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        if self.status is None:
            return "lost"  # no response: it may or may not have committed
        if self.status == 200:
            return "accepted"
        if self.status == 400:
            return "refused"
        if self.status == 503:
            return "unavailable"
        return f"status {self.status}"

    @property
    def known_not_committed(self) -> bool:
        return self.status == 400

    @property
    def accepted(self) -> bool:
        return self.status == 200


def plan(skus: Sequence[str], count: int, *, seed: int) -> list[Command]:
    """``count`` commands over ``skus``: about half shipments, small quantities, so
    that some shipments fail for want of stock and many leave a SKU at or below 5."""
    rng = random.Random(seed)
    commands = []
    for _ in range(count):
        sku = rng.choice(skus)
        if rng.random() < 0.45:
            quantity = rng.randint(10, 20) if rng.random() < 0.05 else rng.randint(1, 6)
            commands.append(Command(sku, "increase", quantity))
        else:
            commands.append(Command(sku, "ship", rng.randint(1, 6)))
    return commands


class Client:
    """Sends commands and records every attempt (thread-safe)."""

    def __init__(
        self,
        base_url: str,
        *,
        retry_statuses: frozenset[int] = frozenset(),
        retry_lost: bool = False,
        max_attempts: int = 1,
        retry_pause: float = 0.1,
        timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url
        self.retry_statuses = retry_statuses
        self.retry_lost = retry_lost
        self.max_attempts = max_attempts
        self.retry_pause = retry_pause
        self.timeout = timeout
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def send(self, command: Command) -> Attempt:
        """Send ``command``, retrying as configured; returns its last attempt."""
        for number in itertools.count(1):
            attempt = self._send_once(command)
            retry = (attempt.status in self.retry_statuses) or (
                attempt.status is None and self.retry_lost
            )
            if not retry or number >= self.max_attempts:
                return attempt
            threading.Event().wait(self.retry_pause)  # a client's back-off, not a test wait
        raise AssertionError("unreachable")

    def _send_once(self, command: Command) -> Attempt:
        attempt = Attempt(command, request_id=f"fault-{uuid.uuid4().hex}")
        with self._lock:
            self.attempts.append(attempt)
        path = f"/warehouse/products/{command.sku}/{command.action}_quantity"
        try:
            response = self._session().post(
                self.base_url + path,
                json={"quantity": command.quantity},
                headers={"X-Request-ID": attempt.request_id},
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            attempt.error = repr(error)
            # A broken keep-alive connection must not poison the next request.
            self._local.session = None
            return attempt
        try:
            attempt.body = response.json()
        except ValueError:
            attempt.body = response.text
        attempt.status = response.status_code
        return attempt

    def absorb(self, other: Client) -> None:
        """Count ``other``'s attempts as this client's."""
        with self._lock:
            self.attempts.extend(other.snapshot())

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(a.outcome for a in self.attempts)

    def statuses(self) -> Counter[int | None]:
        with self._lock:
            return Counter(a.status for a in self.attempts)

    def completed(self) -> int:
        with self._lock:
            return sum(1 for a in self.attempts if a.status is not None or a.error is not None)

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)


@dataclass
class Load:
    """Runs ``commands`` on ``client`` from ``clients`` threads, each pausing
    ``pause`` seconds between its commands (to spread the load over the fault)."""

    client: Client
    commands: list[Command]
    clients: int = 6
    pause: float = 0.0
    _threads: list[threading.Thread] = field(default_factory=list)
    _next: Any = None
    _done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    failures: list[BaseException] = field(default_factory=list)

    def start(self) -> Load:
        self._next = iter(list(self.commands))
        for number in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"load-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _take(self) -> Command | None:
        with self._lock:
            return next(self._next, None)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and (command := self._take()) is not None:
                self.client.send(command)
                with self._lock:
                    self._done += 1
                if self.pause:
                    self._stop.wait(self.pause)
        except BaseException as error:  # surfaced by join()
            self.failures.append(error)

    @property
    def done(self) -> int:
        with self._lock:
            return self._done

    def join(self, timeout: float = 300) -> None:
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                self._stop.set()
                raise AssertionError(f"the load generator still ran after {timeout} s")
        if self.failures:
            raise self.failures[0]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def run_all(client: Client, commands: Iterable[Command]) -> list[Attempt]:
    return [client.send(command) for command in commands]
