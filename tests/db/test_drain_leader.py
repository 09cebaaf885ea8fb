"""Which worker process drains at once on a notification (middleware.DrainWaker):
the one holding the installation's advisory lock, on PostgreSQL."""

from __future__ import annotations

import peewee
import psycopg2
import pytest

from cqrs_warehouse.messaging.middleware import DrainWaker
from cqrs_warehouse.messaging.testing import eventually
from tests.conftest import unique_name

pytestmark = pytest.mark.parametrize("db", ["postgres"], indirect=True)


def waker(channel: str) -> DrainWaker:
    return DrainWaker(
        lambda: None,
        database_url="unused",
        notify_channel=channel,
        sweep_interval=1.0,
    )


def connect(db: peewee.Database):
    connection = psycopg2.connect(dbname=db.database, **db.connect_params)
    connection.autocommit = True
    return connection


def test_one_process_leads_and_another_takes_over_when_its_connection_goes(db):
    channel = unique_name("outbox")
    first, second = connect(db), connect(db)
    try:
        assert waker(channel)._try_to_lead(first) is True
        assert waker(channel)._try_to_lead(second) is False
        assert waker(unique_name("outbox"))._try_to_lead(second) is True  # per installation
        first.close()  # the leading process (or its connection) is gone

        def taken_over() -> None:
            # (The server releases the lock once the closed session's backend ends.)
            assert waker(channel)._try_to_lead(second) is True

        eventually(taken_over, timeout=10)
    finally:
        first.close()
        second.close()


def test_a_process_that_does_not_drain_never_leads(db):
    connection = connect(db)
    try:
        listener_only = waker(unique_name("outbox"))
        listener_only.drains_here = False
        assert listener_only._try_to_lead(connection) is False
    finally:
        connection.close()
