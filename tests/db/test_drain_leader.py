"""Which worker process drains at once on a notification (``waking.DrainWaker``):
the one holding the installation's lock on its LISTEN connection, on PostgreSQL."""

from __future__ import annotations

import threading
import time
import types

import psycopg2
import pytest

from cqrs_warehouse.messaging.testing import eventually
from cqrs_warehouse.messaging.waking import FOLLOWER_DELAY, DrainWaker
from tests.support.services import unique_name

# The runtime fixture, on PostgreSQL only (SQLite has no signals between processes).
pytestmark = pytest.mark.parametrize("runtime", ["postgres"], indirect=True)


@pytest.fixture
def subscriptions(runtime):
    """``subscribe(channel)``: a LISTEN connection of the runtime's signals, closed afterwards."""
    opened = []

    def subscribe(channel: str):
        subscription = runtime.storage.signals.subscribe(channel)
        opened.append(subscription)
        return subscription

    yield subscribe
    for subscription in opened:
        subscription.close()


def test_one_process_leads_and_another_takes_over_when_its_connection_goes(subscriptions):
    channel = unique_name("outbox")
    first, second = subscriptions(channel), subscriptions(channel)
    assert first.try_lock(channel) is True
    assert second.try_lock(channel) is False
    assert second.try_lock(unique_name("outbox")) is True  # per installation
    first.close()  # the leading process (or its connection) is gone

    def taken_over() -> None:
        # (The server releases the lock once the closed session's backend ends.)
        assert second.try_lock(channel) is True

    eventually(taken_over, timeout=10)


def waker(runtime, channel: str, drained: list, swept: list, *, drain=None) -> DrainWaker:
    """``drained``: what each run of the drain was handed (the notifications' payloads)."""
    return DrainWaker(
        database=runtime.database,
        signals=runtime.storage.signals,
        drain=drain or (lambda notified, as_notified: drained.append(list(notified))),
        send_to_drain_actor=lambda: None,
        drain_queue="outbox_drain",
        channel=channel,
        sweep_interval=0.05,
        on_sweep=lambda: swept.append(1),
    )


def booted(waker: DrainWaker, queues: set[str] | None) -> DrainWaker:
    """As a worker started with ``--queues`` (None: every queue) boots it."""
    waker.after_worker_boot(None, types.SimpleNamespace(consumer_whitelist=queues))
    return waker


def test_a_process_that_drains_takes_the_lead(runtime, subscriptions):
    channel = unique_name("outbox")
    drained: list[list[str]] = []
    leader = booted(waker(runtime, channel, drained, []), None)
    try:
        other = subscriptions(channel)

        def leading() -> None:
            assert drained  # it drained at once, then sweeps
            assert other.try_lock(channel) is False

        eventually(leading, timeout=10)
    finally:
        leader.stop()


def test_a_process_that_does_not_drain_never_leads(runtime, subscriptions):
    channel = unique_name("outbox")
    drained: list[list[str]] = []
    swept: list[int] = []
    listener_only = booted(waker(runtime, channel, drained, swept), {"some_listener"})
    try:
        assert listener_only.drains_here is False

        def swept_twice() -> None:
            assert len(swept) >= 2  # it followed the channel through two sweeps

        eventually(swept_twice, timeout=10)
        assert subscriptions(channel).try_lock(channel) is True  # the lock was free
        assert drained == []
    finally:
        listener_only.stop()


def test_the_drain_is_handed_the_payloads_of_the_notifications_that_woke_it(runtime, subscriptions):
    channel = unique_name("outbox")
    drained: list[list[str]] = []
    leader = booted(waker(runtime, channel, drained, []), None)
    try:

        def started() -> None:
            assert drained, "no run yet"

        eventually(started, timeout=10)
        assert drained[0] == []  # the first run, from the start: nothing handed
        sender = psycopg2.connect(runtime.settings.database_url)
        try:
            with sender, sender.cursor() as cursor:  # one transaction: one wake-up
                cursor.execute("SELECT pg_notify(%s, '41'), pg_notify(%s, '42')", (channel,) * 2)
        finally:
            sender.close()

        def woken() -> None:
            assert ["41", "42"] in drained

        eventually(woken, timeout=10)
        assert all(run in ([], ["41", "42"]) for run in drained)  # the sweeps hand nothing
    finally:
        leader.stop()


def notify(runtime, channel: str, payload: str, sent: dict[str, float] | None = None) -> None:
    if sent is not None:
        sent[payload] = time.monotonic()
    sender = psycopg2.connect(runtime.settings.database_url)
    try:
        with sender, sender.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        sender.close()


def until(condition) -> None:
    """Wait (10 s at most) until ``condition()`` is true."""

    def holds() -> None:
        assert condition()

    eventually(holds, timeout=10)


def test_only_the_leader_with_fresh_notifications_publishes_the_notified_rows(runtime):
    channel = unique_name("outbox")
    runs: dict[str, list[tuple[list[str], bool]]] = {"leader": [], "follower": []}

    sent: dict[str, float] = {}  # payload -> when it was sent
    late: list[str] = []  # payloads a follower was handed sooner than FOLLOWER_DELAY

    def drain_of(name: str):
        def drain(notified, as_notified):
            runs[name].append((list(notified), as_notified))
            now = time.monotonic()
            if name == "follower":
                late.extend(p for p in notified if now - sent.get(p, 0.0) < FOLLOWER_DELAY)
            if name == "leader" and notified == ["slow"]:
                # A long run: a notification that arrives meanwhile waits for it.
                notify(runtime, channel, "during", sent)
                threading.Event().wait(2 * FOLLOWER_DELAY)

        return drain

    leader = booted(waker(runtime, channel, [], [], drain=drain_of("leader")), None)
    follower = None
    try:
        until(lambda: runs["leader"])  # it took the lead, and drained
        follower = booted(waker(runtime, channel, [], [], drain=drain_of("follower")), None)
        until(lambda: runs["follower"])

        everything = ["first", "slow", "during", "after"]
        for payload in everything[:2]:
            notify(runtime, channel, payload, sent)
            until(lambda p=payload: ([p], True) in runs["leader"])
        # Notified while the leader was busy for longer than half the followers'
        # delay: taken, as the followers may have acted on it.
        until(lambda: (["during"], False) in runs["leader"])
        notify(runtime, channel, "after", sent)
        until(lambda: (["after"], True) in runs["leader"])
        # The follower, FOLLOWER_DELAY later, is handed them too (coalesced
        # as they came), and always takes.
        until(lambda: [p for run, _ in runs["follower"] for p in run][-4:] == everything)
        assert all(not as_notified for _, as_notified in runs["follower"])
        assert late == []  # each handed over FOLLOWER_DELAY after it was sent, or later
    finally:
        leader.stop()
        if follower is not None:
            follower.stop()
