"""Trusted messages at the listener engine (SQLite and PostgreSQL): a message
without the drain's signature is an untrusted dead letter and moves no
stream; a message over an envelope limit is a dead letter on its first
attempt; storing a dead letter fits every field and, failing for good, never
stops the loop."""

from __future__ import annotations

import logging

import prometheus_client
import pytest

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.envelope import envelope_of
from cqrs_warehouse.messaging.listening import Engine, Outcome
from cqrs_warehouse.messaging.signing import SIGNATURE, MessageKeys
from cqrs_warehouse.messaging.storage.models import qualified_name
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from tests.db.listening import apply, delivered, event, position_of, recorder
from tests.support.prometheus import metric

FORGER = MessageKeys.parse("MESSAGE_KEY", "a-key-this-service-does-not-have-0123456789")


def increase(sku: str, position: int) -> object:
    return event(PRODUCT_QUANTITY_INCREASED, sku, 1, position)


def counted(runtime, name: str, outcome: str) -> float:
    text = prometheus_client.generate_latest(runtime.metrics.registry).decode()
    return metric(text, "cqrs_listener_messages_total", listener=name, outcome=outcome)


def with_keys(runtime, keys: MessageKeys) -> Engine:
    """The engine of a process of the same installation with other keys."""
    engine = runtime.engine
    return Engine(
        outbox=engine.outbox,
        positions=engine.positions,
        registry=engine.registry,
        dead_letters=engine.dead_letters,
        metrics=engine.metrics,
        consistency=engine.consistency,
        keys=keys,
    )


def test_a_forged_message_with_a_far_future_position_is_an_untrusted_dead_letter_and_moves_nothing(
    runtime, sku
):
    seen: list[int] = []
    spec = recorder("rec", seen)
    engine = runtime.engine
    assert apply(engine, spec, increase(sku, 1)) == [Outcome.APPLIED]
    unsigned, wrongly_signed = (
        envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 10**15), runtime.registry)
        for _ in range(2)
    )
    wrongly_signed = FORGER.signed(wrongly_signed)
    signed_then_changed = {**delivered(engine, increase(sku, 2)), "position": 10**15}

    for forged in (unsigned, wrongly_signed, signed_then_changed):
        assert engine.apply(spec, [forged], attempt=1) == [Outcome.DEAD_LETTERED]
    assert position_of(engine, "rec", sku) == 1

    letters = runtime.dead_letters.list("rec")
    assert [
        (letter.untrusted, letter.stream, letter.position, letter.attempts) for letter in letters
    ] == [(True, None, None, 1)] * 3
    assert all(letter.error.startswith("UntrustedMessageError: ") for letter in letters)
    for letter in letters:  # discarding a forged claim moves nothing either
        runtime.dead_letters.discard(letter.id)
    assert position_of(engine, "rec", sku) == 1

    assert apply(engine, spec, increase(sku, 2)) == [Outcome.APPLIED]  # not a "duplicate"
    assert seen == [1, 2]
    assert counted(runtime, "rec", "dead_lettered") == 3


def test_a_forged_message_in_a_batch_is_dead_lettered_and_the_others_are_applied(runtime, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    engine = runtime.engine
    forged = envelope_of(event(PRODUCT_QUANTITY_INCREASED, sku, 1, 3), runtime.registry)
    batch = [delivered(engine, increase(sku, 1)), forged, delivered(engine, increase(sku, 2))]

    outcomes = engine.apply(spec, batch, attempt=1, retry_later=lambda *_: None)

    assert outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.APPLIED]
    assert seen == [1, 2] and position_of(engine, "rec", sku) == 2
    [letter] = runtime.dead_letters.list("rec")
    assert letter.untrusted and letter.message_id == forged["id"]


def test_replay_verifies_an_untrusted_letter_again_with_the_keys_of_the_process(runtime, sku):
    seen: list[int] = []
    spec = recorder("rec", seen)
    # Signed with a key the workers lacked (a rotation gone wrong), or forged.
    envelope = FORGER.signed(envelope_of(increase(sku, 1), runtime.registry))
    assert runtime.engine.apply(spec, [envelope]) == [Outcome.DEAD_LETTERED]
    [letter] = runtime.dead_letters.list("rec")

    assert runtime.engine.replay(spec, letter) is Outcome.DEAD_LETTERED  # still untrusted
    [kept] = runtime.dead_letters.list("rec")
    assert (kept.id, kept.untrusted, kept.attempts) == (letter.id, True, 2)
    assert kept.error.startswith("UntrustedMessageError: ") and seen == []

    with_the_key = with_keys(runtime, MessageKeys((*runtime.message_keys.keys, *FORGER.keys)))
    assert with_the_key.replay(spec, kept) is Outcome.APPLIED
    assert runtime.dead_letters.list("rec") == [] and seen == [1]


def test_a_message_over_an_envelope_limit_is_a_dead_letter_on_its_first_attempt(runtime, sku):
    seen: list[int] = []
    spec = recorder("rec", seen, attempts=5)
    engine = runtime.engine
    long_id = "i" * 200
    over = [
        delivered(engine, increase(f"{sku}-a", 1), id=long_id),
        delivered(engine, increase(f"{sku}-b", 1), stream="s" * 300),
        delivered(engine, increase(f"{sku}-c", 1), correlation_id="c" * 65),
    ]
    for envelope in over:
        assert engine.apply(spec, [envelope], attempt=1) == [Outcome.DEAD_LETTERED]
    assert apply(engine, spec, increase(sku, 1)) == [Outcome.APPLIED]  # the loop goes on
    assert seen == [1]

    letters = runtime.dead_letters.list("rec")
    assert [(bool(letter.poison), letter.untrusted, letter.attempts) for letter in letters] == [
        (True, False, 1)
    ] * 3
    assert [letter.error.split(": ", 2)[2] for letter in letters] == [
        "its id has 200 characters (at most 36)",
        "its stream has 300 characters (at most 255)",
        "its correlation_id has 65 characters (at most 64)",
    ]
    first = letters[0]
    assert len(first.message_id) == 36 and first.message_id.startswith("i" * 27 + "…")
    assert first.envelope_dict["id"] == long_id  # the envelope is kept whole
    assert letters[1].stream == "s" * 254 + "…"

    # Replayed, it fails again and stays one letter, with its attempts.
    assert engine.replay(spec, first) is Outcome.DEAD_LETTERED
    kept = runtime.dead_letters.list("rec")
    assert (len(kept), kept[0].id, kept[0].attempts) == (3, first.id, 2)


def test_storing_a_dead_letter_fits_every_field_to_its_column(runtime, sku):
    huge = {
        "id": "x" * 200,
        "type": "T" * 10_000,
        "schema_version": 1 << 40,
        "stream": "s\0" * 1000,
        "position": 1 << 70,
        "correlation_id": "\ud800",
        "payload": "A" * (3 << 20),
        SIGNATURE: "forged",
    }
    letter = runtime.dead_letters.store(
        "rec", huge, ValueError("e" * 1_000_000), attempts=1, poison=True
    )
    [kept] = runtime.dead_letters.list("rec")
    assert kept.id == letter.id
    assert len(kept.message_id) == 36 and kept.message_id.startswith("x" * 27 + "…")
    assert len(kept.type) == 255 and kept.type.endswith("…")
    assert len(kept.stream) == 255 and "\0" not in kept.stream
    assert (kept.schema_version, kept.position) == (None, None)
    assert len(kept.error) == 2000
    assert kept.envelope_dict["id"] == kept.message_id
    assert kept.envelope_dict["cut"].startswith('{"id": "xxx')
    assert len(kept.envelope) < 5000

    # Another id with the same first characters is another letter.
    runtime.dead_letters.store(
        "rec", {**huge, "id": "x" * 199}, ValueError(), attempts=1, poison=True
    )
    assert len(runtime.dead_letters.list("rec")) == 2


@pytest.fixture
def refusing_dead_letters(runtime):
    """The dead letters table refuses every insert (not a database that is away)."""
    table = qualified_name(DeadLetter)
    if runtime.database.has_schemas:  # PostgreSQL
        create = f"ALTER TABLE {table} ADD CONSTRAINT test_refuse CHECK (false) NOT VALID"
        drop = f"ALTER TABLE {table} DROP CONSTRAINT test_refuse"
    else:
        create = (
            f"CREATE TRIGGER test_refuse BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        drop = "DROP TRIGGER test_refuse"
    runtime.database.execute_sql(create)
    yield
    runtime.database.execute_sql(drop)


def test_a_dead_letter_that_cannot_be_stored_is_logged_and_the_loop_goes_on(
    runtime, sku, refusing_dead_letters, caplog
):
    seen: list[int] = []
    spec = recorder("rec", seen, fail_on={2}, attempts=1)
    engine = runtime.engine
    poison = delivered(engine, increase(f"{sku}-p", 1), payload="AAAA")
    forged = envelope_of(increase(f"{sku}-f", 1), runtime.registry)
    failing = delivered(engine, increase(sku, 2))

    with caplog.at_level(logging.ERROR):
        assert apply(engine, spec, increase(sku, 1)) == [Outcome.APPLIED]
        for envelope in (poison, forged, failing):  # its handler fails at its last attempt
            assert engine.apply(spec, [envelope], attempt=1) == [Outcome.DROPPED]
        assert apply(engine, spec, increase(f"{sku}-next", 1)) == [Outcome.APPLIED]

    assert seen == [1, 1]
    assert counted(runtime, "rec", "dropped") == 3
    dropped = [r for r in caplog.records if "could not be kept as a dead letter" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.ERROR] * 3
    for record, envelope in zip(dropped, (poison, forged, failing), strict=True):
        assert envelope["id"] in record.getMessage()
