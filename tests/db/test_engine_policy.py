"""The listener engine's one entry point (``Engine.apply``) applies one policy
whoever calls it: the tests' ``feed``, a listener's actor with a batch, a
dead letter's replay and a rebuild. Each outcome is counted in the runtime's
metrics (``cqrs_listener_messages_total``), a handler's error ends as a dead
letter at the last attempt, and a transient database error is retried, never
dead-lettered. On SQLite and PostgreSQL."""

from __future__ import annotations

import prometheus_client
import pytest

from cqrs_warehouse.messaging.errors import ConflictError, DatabaseUnavailableError, StorageError
from cqrs_warehouse.messaging.listening import Outcome
from cqrs_warehouse.messaging.listening.rebuild import rebuild
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import OutboxRecord, qualified_name
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from tests.db.listening import (
    Retries,
    apply,
    delivered,
    event,
    listener,
    recorder,
    warehouse_handler,
)
from tests.support.prometheus import metric


def counted(runtime, name: str, outcome: str) -> float:
    text = prometheus_client.generate_latest(runtime.metrics.registry).decode()
    return metric(text, "cqrs_listener_messages_total", listener=name, outcome=outcome)


def outcomes_of(runtime, name: str) -> dict[str, float]:
    kinds = ("applied", "duplicate", "held", "unbound", "retried", "dead_lettered")
    return {kind: counted(runtime, name, kind) for kind in kinds if counted(runtime, name, kind)}


def increase(sku: str, position: int) -> Message:
    return event(PRODUCT_QUANTITY_INCREASED, sku, 1, position)


class Failing:
    """A handler that raises ``error`` for the positions in ``on`` (while set)."""

    def __init__(self, error: Exception, on: set[int]) -> None:
        self.error = error
        self.on = on
        self.applied: list[int] = []

    def __call__(self, message: Message) -> None:
        if message.position in self.on:
            raise self.error
        self.applied.append(message.position or 0)


# --- the tests' feed --------------------------------------------------------------


def test_feed_counts_every_outcome_in_the_runtimes_metrics(runtime, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    shipped_only = listener(
        "shipped_only", seen.append, bindings=("Warehouse.Events.ProductQuantityShipped.*",)
    )
    engine = runtime.engine

    assert feed(engine, spec, increase(sku, 2)) is False  # held
    assert feed(engine, spec, increase(sku, 1)) is True  # applied, with 2
    assert feed(engine, spec, increase(sku, 1)) is False  # a duplicate
    assert feed(engine, shipped_only, increase(sku, 1)) is False  # not bound

    assert outcomes_of(runtime, "rec") == {"held": 1, "applied": 1, "duplicate": 1}
    assert outcomes_of(runtime, "shipped_only") == {"unbound": 1}


def test_feed_raises_a_handlers_error_as_a_first_attempt_counted_as_retried(runtime, sku):
    failing = Failing(RuntimeError("refused"), {1})
    spec = listener("failing", failing, attempts=3)
    with pytest.raises(RuntimeError, match="refused"):
        feed(runtime.engine, spec, increase(sku, 1))
    assert runtime.dead_letters.list("failing") == []
    assert outcomes_of(runtime, "failing") == {"retried": 1}


# --- the actor's delivery, one or a batch ---------------------------------------------


def test_the_last_attempt_of_a_failing_message_stores_a_dead_letter_and_counts_it(runtime, sku):
    spec = listener("failing", Failing(RuntimeError("refused"), {1}), attempts=2)
    envelope = delivered(runtime.engine, increase(sku, 1))
    with pytest.raises(RuntimeError):
        runtime.engine.apply(spec, [envelope], attempt=1)
    assert runtime.engine.apply(spec, [envelope], attempt=2) == [Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("failing")
    assert (letter.attempts, letter.poison, letter.error) == (2, 0, "RuntimeError: refused")
    assert outcomes_of(runtime, "failing") == {"retried": 1, "dead_lettered": 1}


def test_a_batch_counts_each_of_its_messages(runtime, sku):
    failing = Failing(RuntimeError("refused"), {2})
    spec = listener("batched", failing, attempts=3)
    retries = Retries()

    outcomes = apply(runtime.engine, spec, increase(sku, 1), increase(sku, 2), retry_later=retries)

    assert outcomes == [Outcome.APPLIED, Outcome.RETRIED]
    assert retries.asked == [(2, 1)]
    # 1 applied on its own after the batch failed, 2 failed on its own (retried once)
    assert outcomes_of(runtime, "batched") == {"applied": 1, "retried": 1}


def test_a_poison_message_is_dead_lettered_and_counted_alone_or_in_a_batch(runtime, sku):
    spec = recorder("rec", [])
    alone, in_batch = (
        delivered(runtime.engine, increase(f"{sku}-{n}", 1), payload="AAAA")  # not an Increased
        for n in (1, 2)
    )
    healthy = delivered(runtime.engine, increase(sku, 1))

    assert runtime.engine.apply(spec, [alone]) == [Outcome.DEAD_LETTERED]
    assert runtime.engine.apply(spec, [in_batch, healthy], retry_later=Retries()) == [
        Outcome.DEAD_LETTERED,
        Outcome.APPLIED,
    ]
    assert [(letter.message_id, letter.poison) for letter in runtime.dead_letters.list("rec")] == [
        (alone["id"], 1),
        (in_batch["id"], 1),
    ]
    assert outcomes_of(runtime, "rec") == {"dead_lettered": 2, "applied": 1}


@pytest.mark.parametrize(
    "error",
    [DatabaseUnavailableError("the database went away"), ConflictError("a deadlock")],
    ids=["unavailable", "conflict"],
)
def test_a_transient_database_error_is_retried_even_at_the_last_attempt(runtime, sku, error):
    spec = listener("transient", Failing(error, {1, 2}), attempts=1)
    one, two = (delivered(runtime.engine, increase(sku, p)) for p in (1, 2))
    other = delivered(runtime.engine, increase(f"{sku}-b", 1))

    with pytest.raises(type(error)):
        runtime.engine.apply(spec, [one], attempt=1)  # the last attempt
    with pytest.raises(type(error)):
        runtime.engine.apply(spec, [one], final=True)
    with pytest.raises(type(error)):  # a batch: every message comes again
        runtime.engine.apply(spec, [two, other], final=True)

    assert runtime.dead_letters.list("transient") == []
    assert outcomes_of(runtime, "transient") == {"retried": 4}


def test_a_statement_the_database_refuses_is_the_handlers_error_and_is_dead_lettered(runtime, sku):
    # Not a database that is away: on SQLite too (whose driver calls it an
    # OperationalError), it fails at every attempt, so it ends as a dead letter.
    def broken(message: Message) -> None:
        runtime.database.execute_sql(f"SELECT no_such_column FROM {qualified_name(OutboxRecord)}")

    spec = listener("broken", broken, attempts=2)
    envelope = delivered(runtime.engine, increase(sku, 1))
    with pytest.raises(StorageError):
        runtime.engine.apply(spec, [envelope], attempt=1)
    assert runtime.engine.apply(spec, [envelope], attempt=2) == [Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("broken")
    assert letter.error.startswith("StorageError: ")
    assert outcomes_of(runtime, "broken") == {"retried": 1, "dead_lettered": 1}


# --- a replay ---------------------------------------------------------------------------


def test_a_replay_is_counted_and_a_transient_error_keeps_the_letter(runtime, sku):
    failing = Failing(RuntimeError("refused"), {1})
    spec = listener("failing", failing, attempts=1)
    apply(runtime.engine, spec, increase(sku, 1))  # dead-lettered at its only attempt
    [letter] = runtime.dead_letters.list("failing")

    failing.error = DatabaseUnavailableError("the database went away")
    with pytest.raises(DatabaseUnavailableError):
        runtime.engine.replay(spec, letter)
    [kept] = runtime.dead_letters.list("failing")
    assert (kept.id, kept.attempts, kept.error) == (letter.id, 1, "RuntimeError: refused")

    failing.on.clear()
    assert runtime.engine.replay(spec, kept) == Outcome.APPLIED
    assert runtime.dead_letters.list("failing") == []
    assert outcomes_of(runtime, "failing") == {"dead_lettered": 1, "retried": 1, "applied": 1}


# --- a rebuild ----------------------------------------------------------------------------


def test_a_rebuild_counts_what_it_replays_and_dead_letters_what_fails(runtime, sku):
    archive = listener("archive", warehouse_handler(runtime, "archive"))
    failing = Failing(RuntimeError("refused"), set())
    spec = listener("rebuilt", failing, reset=lambda: None)
    for position in (1, 2, 3):
        message = increase(sku, position)
        feed(runtime.engine, archive, message)
        feed(runtime.engine, spec, message)
    failing.on.add(2)
    failing.applied.clear()

    report = rebuild(runtime.engine, spec, archive, catch_up_timeout=5)

    # Replayed as a last attempt: the batch fails and is undone, then each
    # message alone: 1 applied, 2 dead-lettered, 3 held (it waits for 2).
    assert (report.replayed, report.applied, report.failed, report.skipped) == (3, 1, 1, 1)
    assert failing.applied == [1, 1]  # in the batch (undone), then alone
    [letter] = runtime.dead_letters.list("rebuilt")
    assert (letter.position, letter.poison) == (2, 0)
    assert outcomes_of(runtime, "rebuilt") == {
        "applied": 4,  # 3 fed live, then 1 replayed
        "dead_lettered": 1,
        "held": 1,
    }
