"""Which worker process drains at once on a notification (``waking.DrainWaker``):
the one holding the installation's lock on its LISTEN connection, on PostgreSQL."""

from __future__ import annotations

import types

import psycopg2
import pytest

from cqrs_warehouse.messaging.testing import eventually
from cqrs_warehouse.messaging.waking import DrainWaker
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


def waker(runtime, channel: str, drained: list, swept: list) -> DrainWaker:
    """``drained``: what each run of the drain was handed (the notifications' payloads)."""
    return DrainWaker(
        database=runtime.database,
        signals=runtime.storage.signals,
        drain=lambda notified: drained.append(list(notified)),
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
