"""`cqrs-warehouse dead-letters`, run as operators run it, on the shared
``ops`` installation.

Dead letters are made the way production makes them: the ``picky``
listeners of the recorders slice (tests/slices/recorders), running in the
installation's dramatiq workers, fail on SKUs a test refuses them; after
their last attempt the workers store the dead letter.
"""

from __future__ import annotations

import base64
import json

import pytest
import requests

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from tests.processes.state import (
    INCREASED,
    accept,
    applied_position,
    applied_quantities,
    held_positions,
    letter_of,
    refuse,
    wait,
    wait_for_held,
    wait_for_letter,
)
from tests.support.environment import SCHEMAS
from tests.support.installation import Installation
from tests.support.processes import Finished
from tests.support.services import unique_name

pytestmark = pytest.mark.processes

REGISTRY = SchemaRegistry(SCHEMAS)


def assert_ok(finished: Finished) -> str:
    """Its standard output, once it exited 0."""
    assert finished.returncode == 0, finished.output
    return finished.stdout


def dead_letter_then_held(ops: Installation, sku: str) -> tuple[DeadLetter, requests.Response]:
    """``picky`` dead-letters sku's first event (10) and holds its second (7)."""
    refuse(ops, "picky", sku)
    first = ops.increase(sku, 10)
    assert first.status_code == 200, first.text
    letter = wait_for_letter(ops, "picky", sku)
    assert ops.increase(sku, 7).status_code == 200
    wait_for_held(ops, "picky", sku, [2])
    return letter, first


def test_dead_letters_list_and_show_describe_what_the_workers_gave_up_on(ops, sku):
    letter, response = dead_letter_then_held(ops, sku)

    listed = assert_ok(ops.cli("dead-letters", "list"))
    rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert str(letter.id) in rows, listed
    row = rows[str(letter.id)].split()
    assert row[1:5] == ["picky", INCREASED, "v1", "2"], rows[str(letter.id)]
    assert f"RuntimeError: picky refuses SKU {sku}" in rows[str(letter.id)]
    assert listed.splitlines()[0].split() == ["ID", "LISTENER", "TYPE", "ATTEMPTS", "ERROR"]

    only_picky = assert_ok(ops.cli("dead-letters", "list", "--listener", "picky"))
    assert str(letter.id) in {line.split()[0] for line in only_picky.splitlines()[1:]}
    assert all(
        line.split()[1] == "picky" for line in only_picky.splitlines()[1:] if line.strip()
    ), only_picky
    nobody = assert_ok(ops.cli("dead-letters", "list", "--listener", unique_name("nobody")))
    assert nobody.strip() == "no dead letters"

    shown = json.loads(assert_ok(ops.cli("dead-letters", "show", str(letter.id))))
    message_id = response.json()["message_id"]
    assert shown["id"] == letter.id
    assert shown["listener"] == "picky"
    assert shown["message_id"] == message_id
    assert (shown["type"], shown["schema_version"]) == (INCREASED, 1)
    assert (shown["stream"], shown["position"]) == (sku, 1)
    assert shown["attempts"] == 2 and shown["poison"] is False
    assert shown["error"] == f"RuntimeError: picky refuses SKU {sku}"
    assert shown["created_at"]
    envelope = shown["envelope"]
    assert envelope["id"] == message_id
    assert envelope["correlation_id"] == response.headers["X-Request-ID"]
    payload = REGISTRY.decode(INCREASED, 1, base64.b64decode(envelope["payload"]))
    assert payload == {"sku": sku, "quantity": 10}


def _equal(actual, expected) -> None:
    assert actual == expected


def test_replay_applies_a_fixed_letter_and_the_messages_held_behind_it(ops, sku):
    letter, _ = dead_letter_then_held(ops, sku)
    # While the cause remains, a replay fails again and keeps the letter
    failed = ops.cli("dead-letters", "replay", str(letter.id))
    assert failed.returncode == 1, failed.output
    assert f"{letter.id}: failed again, kept" in failed.stdout
    assert f"picky refuses SKU {sku}" in failed.stdout
    assert letter_of(ops, "picky", sku) is not None
    assert applied_quantities(ops, "picky", sku) == []
    # Once fixed, the replay applies it, and the held successor with it, in order
    accept(ops, "picky", sku)
    output = assert_ok(ops.cli("dead-letters", "replay", str(letter.id)))
    assert output.strip() == f"{letter.id}: applied"
    assert letter_of(ops, "picky", sku) is None
    assert applied_quantities(ops, "picky", sku) == [10, 7]
    assert held_positions(ops, "picky", sku) == []
    assert applied_position(ops, "picky", sku) == 2
    # Later messages flow normally again
    assert ops.ship(sku, 2).status_code == 200
    wait(lambda: _equal(applied_quantities(ops, "picky", sku), [10, 7, 2]))


def test_replay_all_of_one_listener_leaves_the_other_listeners_letters(ops, sku):
    first, second, other = f"{sku}-a", f"{sku}-b", f"{sku}-c"
    refuse(ops, "picky_all", first)
    refuse(ops, "picky_all", second)
    refuse(ops, "picky_other", other)
    for each in (first, second, other):
        assert ops.increase(each, 9).status_code == 200
    letters = [
        wait_for_letter(ops, "picky_all", first),
        wait_for_letter(ops, "picky_all", second),
    ]
    kept = wait_for_letter(ops, "picky_other", other)
    for listener, each in (("picky_all", first), ("picky_all", second), ("picky_other", other)):
        accept(ops, listener, each)

    output = assert_ok(ops.cli("dead-letters", "replay", "--all", "--listener", "picky_all"))
    assert sorted(output.split("\n")[:-1]) == sorted(f"{x.id}: applied" for x in letters), output
    assert letter_of(ops, "picky_all", first) is None
    assert letter_of(ops, "picky_all", second) is None
    assert applied_quantities(ops, "picky_all", first) == [9]
    assert applied_quantities(ops, "picky_all", second) == [9]
    # picky_other's letter is untouched
    assert letter_of(ops, "picky_other", other) is not None
    assert applied_quantities(ops, "picky_other", other) == []
    listed = assert_ok(ops.cli("dead-letters", "list", "--listener", "picky_other"))
    assert str(kept.id) in {line.split()[0] for line in listed.splitlines()[1:]}
    # --all replays nothing of a listener without letters; an id or --all is required
    assert assert_ok(ops.cli("dead-letters", "replay", "--all", "--listener", "picky_all")) == ""
    usage = ops.cli("dead-letters", "replay")
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_discard_moves_the_listener_past_the_letter_and_releases_the_held_messages(ops, sku):
    letter, _ = dead_letter_then_held(ops, sku)
    accept(ops, "picky", sku)
    output = assert_ok(ops.cli("dead-letters", "discard", str(letter.id)))
    assert output.strip() == f"{letter.id}: discarded"
    assert letter_of(ops, "picky", sku) is None
    # The workers' sweep sends the held successor back through the broker: it is
    # applied, and the discarded message never is.
    wait(lambda: _equal(applied_quantities(ops, "picky", sku), [7]))
    wait(lambda: _equal(applied_position(ops, "picky", sku), 2))
    assert held_positions(ops, "picky", sku) == []


@pytest.mark.parametrize(
    "command", [("show",), ("replay",), ("discard",)], ids=["show", "replay", "discard"]
)
def test_an_unknown_dead_letter_id_is_refused_with_a_clear_message(ops, command):
    missing = "987654321"
    finished = ops.cli("dead-letters", *command, missing)
    assert finished.returncode != 0, finished.output
    assert finished.stderr.strip() == f"cqrs-warehouse: no dead letter {missing}"
    assert finished.stdout == ""
    not_a_number = ops.cli("dead-letters", *command, "abc")
    assert not_a_number.returncode == 2 and "invalid int value" in not_a_number.stderr
