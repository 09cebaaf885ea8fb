"""PostgreSQL transactions whose BEGIN travels with their first statement
(messaging.database.DeferredBeginPostgresqlDatabase), against the real server."""

from __future__ import annotations

import peewee
import psycopg2
import pytest

from cqrs_warehouse.messaging.database import DeferredBeginPostgresqlDatabase
from cqrs_warehouse.messaging.listener_state import ProcessedMessage, first_time
from tests.conftest import unique_name

# The `db` fixture, on PostgreSQL only (SQLite's transactions begin as peewee does).
pytestmark = pytest.mark.parametrize("db", ["postgres"], indirect=True)


@pytest.fixture
def pg(db: peewee.Database) -> peewee.Database:
    assert isinstance(db, DeferredBeginPostgresqlDatabase)
    return db


IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
IN_TRANSACTION = psycopg2.extensions.TRANSACTION_STATUS_INTRANS


def status(db: peewee.Database) -> int:
    return db.connection().get_transaction_status()


def seen_from_another_connection(db: peewee.Database, message_id: str) -> bool:
    other = psycopg2.connect(dbname=db.database, **db.connect_params)
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM messaging.messaging_processed_messages WHERE message_id = %s",
                (message_id,),
            )
            return cursor.fetchone() is not None
    finally:
        other.close()


def test_the_first_statement_of_a_transaction_is_inside_it(pg):
    first, second = unique_name("m"), unique_name("m")
    with pytest.raises(RuntimeError), pg.atomic():
        assert status(pg) == IDLE  # BEGIN not sent on its own...
        assert first_time("rec", first)  # ...but with the first statement
        assert status(pg) == IN_TRANSACTION
        assert seen_from_another_connection(pg, first) is False  # not committed yet
        first_time("rec", second)
        raise RuntimeError("undo")

    assert ProcessedMessage.select().count() == 0  # both undone
    assert not seen_from_another_connection(pg, first)


def test_a_committed_transaction_is_visible_and_the_connection_leaves_it(pg):
    message_id = unique_name("m")
    with pg.atomic():
        first_time("rec", message_id)
    assert seen_from_another_connection(pg, message_id)
    assert status(pg) == IDLE


def test_a_transaction_without_statements_sends_nothing_and_leaves_no_transaction_open(pg):
    with pg.atomic():
        pass
    with pytest.raises(RuntimeError), pg.atomic():
        raise RuntimeError("undo")
    message_id = unique_name("m")
    first_time("rec", message_id)  # autocommit again: visible at once
    assert seen_from_another_connection(pg, message_id)


def test_savepoints_inside_a_deferred_transaction_roll_back_only_their_part(pg):
    kept, undone = unique_name("m"), unique_name("m")
    with pg.atomic():
        with pytest.raises(RuntimeError), pg.atomic():  # the savepoint carries BEGIN
            first_time("rec", undone)
            raise RuntimeError("undo the savepoint")
        first_time("rec", kept)
    assert seen_from_another_connection(pg, kept)
    assert not seen_from_another_connection(pg, undone)


def test_a_begin_deferred_on_a_connection_since_closed_is_not_sent_on_the_next(pg):
    pg.begin()  # deferred; then the connection goes away (a database restart)
    pg._state.conn.close()
    pg._state.reset()
    message_id = unique_name("m")
    first_time("rec", message_id)  # a new connection, in autocommit
    assert seen_from_another_connection(pg, message_id)
