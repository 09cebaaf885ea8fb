"""``messaging.storage``'s ``Statement`` and ``Bulk``, the queries slices write
once for every database: the values land where peewee put them, a bet
(``must_exceed``) that is lost refuses the transaction, and a deferred one
travels with the COMMIT on PostgreSQL. On SQLite and PostgreSQL."""

from __future__ import annotations

import peewee
import pytest

from cqrs_warehouse.messaging import Bulk, Statement
from cqrs_warehouse.messaging.errors import RefusedClaimError
from tests.db.listening import record_queries
from tests.slices.recorders.listeners import ReceivedShipment
from tests.slices.returns.returns import ReturnedQuantity

# Add to a SKU's quantity; returns the new quantity (a constant in the query: 0).
ADD = Statement(
    lambda sku, delta: (
        ReturnedQuantity.insert(sku=sku, quantity=delta)
        .on_conflict(
            conflict_target=[ReturnedQuantity.sku],
            update={
                ReturnedQuantity.quantity: ReturnedQuantity.quantity + peewee.EXCLUDED.quantity
            },
            where=(ReturnedQuantity.quantity >= 0),
        )
        .returning(ReturnedQuantity.quantity)
    ),
    "\x01sku",
    10**15 + 7,
)
ADD_MANY = Bulk(
    [ReturnedQuantity.sku, ReturnedQuantity.quantity],
    lambda insert: insert.on_conflict(
        conflict_target=[ReturnedQuantity.sku],
        update={ReturnedQuantity.quantity: ReturnedQuantity.quantity + peewee.EXCLUDED.quantity},
    ).returning(ReturnedQuantity.sku, ReturnedQuantity.quantity),
)
SHIPMENTS = Bulk(
    [
        ReceivedShipment.message_id,
        ReceivedShipment.type,
        ReceivedShipment.sku,
        ReceivedShipment.quantity,
    ]
)


def quantity(sku: str) -> int | None:
    row = ReturnedQuantity.get_or_none(ReturnedQuantity.sku == sku)
    return None if row is None else int(row.quantity)


def is_postgres(runtime) -> bool:
    return bool(runtime.database.defers)


# --- Statement ----------------------------------------------------------------------


def test_a_statement_runs_with_new_values_each_time(runtime, sku):
    with runtime.database.atomic():
        assert ADD.rows(sku, 3) == [(3,)]
        assert ADD.rows(sku, 4) == [(7,)]
        ADD.run(f"{sku}-b", 1)
    assert (quantity(sku), quantity(f"{sku}-b")) == (7, 1)


def test_samples_that_match_one_another_are_refused():
    with pytest.raises(ValueError, match="several samples"):
        Statement(
            lambda a, b: ReturnedQuantity.update(quantity=a).where(ReturnedQuantity.quantity == b),
            5,
            5,
        ).rows(1, 2)


def test_a_bet_that_holds_commits_with_its_write(runtime, sku):
    with runtime.outbox.transaction():
        ADD.run(sku, 10, defer=True, must_exceed=5)
    assert quantity(sku) == 10


def test_a_bet_that_is_lost_refuses_the_transaction(runtime, sku):
    ADD.run(sku, 3)  # 3, then 3 + 1 = 4: not above 5
    reached_the_end = False
    with pytest.raises(RefusedClaimError), runtime.outbox.transaction():
        ADD.run(sku, 1, defer=True, must_exceed=5)
        # On PostgreSQL the bet went nowhere yet: it is refused by the COMMIT.
        # Elsewhere it ran, and was refused, at once.
        reached_the_end = True
    assert reached_the_end == is_postgres(runtime)
    assert quantity(sku) == 3  # the lost bet's write was undone with its transaction


def test_a_lost_bet_not_deferred_is_refused_at_once(runtime, sku):
    ADD.run(sku, 1)
    with pytest.raises(RefusedClaimError), runtime.outbox.transaction():
        ADD.run(sku, 1, must_exceed=5)
        pytest.fail("the bet was not refused by its own statement")
    assert quantity(sku) == 1


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_deferred_bet_travels_with_the_commit_in_one_round_trip(runtime, sku, monkeypatch):
    ADD.run(sku, 10)
    with runtime.outbox.transaction():  # (prepared: the next transaction prepares nothing)
        ADD.run(sku, 1, defer=True, must_exceed=5)
    sent = record_queries(monkeypatch)

    with runtime.outbox.transaction():
        ADD.run(sku, 1, defer=True, must_exceed=5)

    assert len(sent) == 1, sent
    assert sent[0].startswith("BEGIN; ") and sent[0].endswith("COMMIT")
    assert "EXECUTE " in sent[0]  # the bet's statement, prepared, with its minimum: 5
    assert sent[0].endswith(", 5); COMMIT"), sent
    assert quantity(sku) == 12


# --- Bulk ---------------------------------------------------------------------------


def test_a_bulk_insert_writes_every_row_and_returns_them(runtime, sku):
    skus = [f"{sku}-{n}" for n in range(5)]
    with runtime.database.atomic():
        rows = ADD_MANY.rows([skus, [1, 2, 3, 4, 5]])
        again = ADD_MANY.rows([skus[:2], [10, 10]])
    assert sorted(rows) == sorted(zip(skus, [1, 2, 3, 4, 5], strict=True))
    assert sorted(again) == [(skus[0], 11), (skus[1], 12)]
    assert [quantity(s) for s in skus] == [11, 12, 3, 4, 5]


def test_a_bulk_insert_keeps_the_order_of_its_rows(runtime, sku):
    ids = [f"{sku}-{n:02d}" for n in (3, 1, 2)]
    SHIPMENTS.run([ids, ["t"] * 3, [sku] * 3, [1, 2, 3]])
    rows = ReceivedShipment.select().where(ReceivedShipment.sku == sku)
    assert sorted((r.message_id, r.quantity) for r in rows) == [
        (ids[1], 2),
        (ids[2], 3),
        (ids[0], 1),
    ]


def test_a_bulk_insert_takes_empty_values_in_places(runtime, sku):
    # A column of NULLs, and one NULL among values.
    SHIPMENTS.run([[f"{sku}-a", f"{sku}-b"], ["t", "t"], [sku, sku], [None, 4]])
    rows = ReceivedShipment.select().where(ReceivedShipment.sku == sku)
    assert sorted((r.message_id, r.quantity) for r in rows) == [(f"{sku}-a", None), (f"{sku}-b", 4)]
    SHIPMENTS.run([[f"{sku}-c"], ["t"], [sku], [None]])
    assert ReceivedShipment.get(ReceivedShipment.message_id == f"{sku}-c").quantity is None


def test_a_deferred_bulk_insert_is_undone_with_its_transaction(runtime, sku):
    with pytest.raises(RuntimeError), runtime.outbox.transaction():
        ADD_MANY.run([[sku], [5]], defer=True)
        raise RuntimeError("undo")
    assert quantity(sku) is None
    with runtime.outbox.transaction():
        ADD_MANY.run([[sku], [5]], defer=True)
    assert quantity(sku) == 5


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_on_postgresql_a_bulk_insert_is_one_statement_whatever_its_rows(runtime, sku, monkeypatch):
    ADD_MANY.run([[f"{sku}-x", f"{sku}-y"], [1, 1]])  # (prepared)
    sent = record_queries(monkeypatch)

    with runtime.outbox.transaction():
        ADD_MANY.run([[f"{sku}-{n}" for n in range(50)], list(range(50))], defer=True)

    assert len(sent) == 1, sent  # BEGIN, the insert of 50 rows and the COMMIT together
    assert sent[0].startswith("BEGIN; EXECUTE ") and sent[0].endswith("COMMIT")
    assert ReturnedQuantity.select().where(ReturnedQuantity.sku.startswith(sku)).count() == 52


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_on_postgresql_one_row_goes_in_a_plain_values_insert_to_the_same_effect(
    runtime, sku, monkeypatch
):
    sent = record_queries(monkeypatch)
    with runtime.outbox.transaction():
        first = ADD_MANY.rows([[sku], [5]])
        second = ADD_MANY.rows([[sku], [7]])
    assert (first, second) == ([(sku, 5)], [(sku, 12)])  # its ON CONFLICT and RETURNING hold
    [name] = {q.split("EXECUTE ", 1)[1].split("(", 1)[0] for q in sent if "EXECUTE " in q}
    [(text,)] = runtime.database.execute_sql(
        "SELECT statement FROM pg_prepared_statements WHERE name = %s", (name,)
    ).fetchall()
    assert " VALUES ($1, $2) " in text and "unnest" not in text, text
