"""PostgreSQL transactions whose BEGIN travels with their first statement, and
statements deferred to the next one or the COMMIT
(messaging/storage/postgres.py ``DeferredPostgresql``), against the real server.

Some tests close the connection under peewee to play a database restart: they
pin peewee's per-thread state (``_state``), which the source itself relies on
in messaging/storage/postgres.py and database.py (peewee has no public way).
"""

from __future__ import annotations

import peewee
import psycopg2
import pytest

from cqrs_warehouse.messaging.errors import (
    DatabaseUnavailableError,
    MissingTableError,
    StorageError,
    TransientStorageError,
)
from cqrs_warehouse.messaging.storage.database import PostgresDatabase, open_database
from cqrs_warehouse.messaging.storage.models import ProcessedMessage
from cqrs_warehouse.messaging.storage.postgres import DeferredPostgresql
from tests.db.listening import record_queries
from tests.support.services import unique_name

# The runtime fixture, on PostgreSQL only (SQLite's transactions begin as peewee does).
pytestmark = pytest.mark.parametrize("runtime", ["postgres"], indirect=True)


@pytest.fixture
def pg(runtime) -> PostgresDatabase:
    assert isinstance(runtime.database, DeferredPostgresql)
    return runtime.database


@pytest.fixture
def mark_applied(runtime):
    """``Positions.mark_applied``: records a message id as applied by a listener."""
    return runtime.storage.positions.mark_applied


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


def test_the_first_statement_of_a_transaction_is_inside_it(pg, mark_applied):
    first, second = unique_name("m"), unique_name("m")
    with pytest.raises(RuntimeError), pg.atomic():
        assert status(pg) == IDLE  # BEGIN not sent on its own...
        assert mark_applied("rec", first)  # ...but with the first statement
        assert status(pg) == IN_TRANSACTION
        assert seen_from_another_connection(pg, first) is False  # not committed yet
        mark_applied("rec", second)
        raise RuntimeError("undo")

    assert ProcessedMessage.select().count() == 0  # both undone
    assert not seen_from_another_connection(pg, first)


def test_a_committed_transaction_is_visible_and_the_connection_leaves_it(pg, mark_applied):
    message_id = unique_name("m")
    with pg.atomic():
        mark_applied("rec", message_id)
    assert seen_from_another_connection(pg, message_id)
    assert status(pg) == IDLE


def test_a_transaction_without_statements_sends_nothing_and_leaves_no_transaction_open(
    pg, mark_applied
):
    with pg.atomic():
        pass
    with pytest.raises(RuntimeError), pg.atomic():
        raise RuntimeError("undo")
    message_id = unique_name("m")
    mark_applied("rec", message_id)  # autocommit again: visible at once
    assert seen_from_another_connection(pg, message_id)


def test_savepoints_inside_a_deferred_transaction_roll_back_only_their_part(pg, mark_applied):
    kept, undone = unique_name("m"), unique_name("m")
    with pg.atomic():
        with pytest.raises(RuntimeError), pg.atomic():  # the savepoint carries BEGIN
            mark_applied("rec", undone)
            raise RuntimeError("undo the savepoint")
        mark_applied("rec", kept)
    assert seen_from_another_connection(pg, kept)
    assert not seen_from_another_connection(pg, undone)


def test_a_begin_deferred_on_a_connection_since_closed_is_not_sent_on_the_next(pg, mark_applied):
    pg.begin()  # deferred; then the connection goes away (a database restart)
    pg._state.conn.close()  # (pins peewee's _state: see the module's docstring)
    pg._state.reset()
    message_id = unique_name("m")
    mark_applied("rec", message_id)  # a new connection, in autocommit
    assert seen_from_another_connection(pg, message_id)


# --- deferred statements (DeferredBeginPostgresqlDatabase.defer) ---------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return record_queries(monkeypatch)


INSERT = "INSERT INTO messaging.messaging_processed_messages (listener, message_id) VALUES (%s, %s)"


def test_a_deferred_statement_goes_with_the_commit_in_one_round_trip(pg, sent, mark_applied):
    first, deferred = unique_name("m"), unique_name("m")
    with pg.atomic():
        mark_applied("rec", first)
        pg.defer(INSERT, ("rec", deferred))
        assert len(sent) == 1  # not sent yet
        assert not seen_from_another_connection(pg, deferred)

    assert len(sent) == 2
    assert sent[1].endswith("; COMMIT") and deferred in sent[1]
    assert seen_from_another_connection(pg, first)
    assert seen_from_another_connection(pg, deferred)
    assert status(pg) == IDLE


def test_a_deferred_statement_runs_before_the_next_statement_of_its_transaction(
    pg, sent, mark_applied
):
    message_id = unique_name("m")
    with pg.atomic():
        pg.defer(INSERT, ("rec", message_id))
        # The same id, recorded by the deferred insert that travels first.
        assert mark_applied("rec", message_id) is False
        assert len(sent) == 1 and sent[0].startswith("BEGIN; ")
    assert seen_from_another_connection(pg, message_id)


def test_deferred_values_holding_percent_signs_travel_before_a_statement_with_values(
    pg, sent, mark_applied
):
    deferred, then, last = unique_name("100%s%%"), unique_name("m"), unique_name("%(x)s%")
    with pg.atomic():
        mark_applied("rec", unique_name("m"))
        pg.defer(INSERT, ("rec", deferred))
        assert mark_applied("rec", then)  # its own values bound after the deferred text
        pg.defer(INSERT, ("rec", last))  # and one with the COMMIT
    assert len(sent) == 3
    for message_id in (deferred, then, last):
        assert seen_from_another_connection(pg, message_id)


def test_a_transaction_that_only_deferred_sends_begin_statements_and_commit_at_once(
    pg, sent, mark_applied
):
    message_id = unique_name("m")
    with pg.atomic():
        pg.defer(INSERT, ("rec", message_id))
    assert len(sent) == 1
    assert sent[0].startswith("BEGIN; ") and sent[0].endswith("; COMMIT")
    assert seen_from_another_connection(pg, message_id)


def test_a_deferred_statement_of_a_transaction_rolled_back_is_never_sent(pg, sent, mark_applied):
    message_id = unique_name("m")
    with pytest.raises(RuntimeError), pg.atomic():
        pg.defer(INSERT, ("rec", message_id))
        raise RuntimeError("undo")
    assert sent == []
    assert not seen_from_another_connection(pg, message_id)
    assert status(pg) == IDLE


def test_a_rollback_to_a_savepoint_drops_what_was_deferred_inside_it_only(pg, mark_applied):
    before, inside, after = unique_name("m"), unique_name("m"), unique_name("m")
    with pg.atomic():
        pg.defer(INSERT, ("rec", before))
        with pytest.raises(RuntimeError), pg.atomic():  # SAVEPOINT carries `before`
            pg.defer(INSERT, ("rec", inside))
            raise RuntimeError("undo the savepoint")
        pg.defer(INSERT, ("rec", after))
    assert seen_from_another_connection(pg, before)
    assert not seen_from_another_connection(pg, inside)
    assert seen_from_another_connection(pg, after)


def test_a_failing_deferred_statement_fails_the_commit_and_undoes_the_transaction(pg, mark_applied):
    taken, first = unique_name("m"), unique_name("m")
    mark_applied("rec", taken)  # committed: inserting it again violates the key
    with pytest.raises(StorageError) as refused, pg.atomic():
        mark_applied("rec", first)
        pg.defer(INSERT, ("rec", taken))
    assert not isinstance(refused.value, TransientStorageError)  # a constraint: it stays
    assert not seen_from_another_connection(pg, first)
    assert status(pg) == IDLE
    mark_applied("rec", unique_name("m"))  # the connection goes on


def test_a_deferred_statement_outside_a_transaction_runs_at_once(pg, mark_applied):
    message_id = unique_name("m")
    pg.defer(INSERT, ("rec", message_id))
    assert seen_from_another_connection(pg, message_id)


def test_a_deferred_statement_is_lost_with_its_connection_and_the_next_transaction_runs(
    pg, mark_applied
):
    lost = unique_name("m")
    with pytest.raises(DatabaseUnavailableError), pg.atomic():
        mark_applied("rec", unique_name("m"))
        pg.defer(INSERT, ("rec", lost))
        pg._state.conn.close()  # the database went away (pins peewee's _state)
    pg.discard_broken_connection()
    message_id = unique_name("m")
    with pg.atomic():
        mark_applied("rec", message_id)
    assert seen_from_another_connection(pg, message_id)
    assert not seen_from_another_connection(pg, lost)


def test_the_commit_of_a_transaction_that_an_error_aborted_raises_instead_of_rolling_back_quietly(
    pg, mark_applied
):
    message_id = unique_name("m")
    with pytest.raises(StorageError, match="aborted"), pg.atomic():
        mark_applied("rec", message_id)
        with pytest.raises(MissingTableError):
            pg.execute_sql("SELECT * FROM no_such_table")  # caught: the transaction is aborted
    assert not seen_from_another_connection(pg, message_id)
    assert status(pg) == IDLE


def test_with_a_pool_url_deferred_statements_run_at_once(pg, migrated):
    pooled = open_database("postgresql+pool://" + migrated["postgres"].split("://", 1)[1])
    try:
        assert not isinstance(pooled, DeferredPostgresql) and not pooled.defers
        message_id = unique_name("m")
        with pooled.atomic():
            pooled.execute_prepared(INSERT, ("rec", message_id), defer=True)
            assert pooled.execute_sql(
                "SELECT 1 FROM messaging.messaging_processed_messages WHERE message_id = %s",
                (message_id,),
            ).fetchone()  # already run, in the transaction
        assert seen_from_another_connection(pg, message_id)
    finally:
        pooled.close_all()
