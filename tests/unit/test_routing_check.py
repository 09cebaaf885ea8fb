"""``routing_lint.check``: what in listeners.yaml cannot work (an error: the
workers refuse to start) and what merely looks wrong (warnings), against the
routing keys of the known event types; and the runtime's use of it."""

import pytest

from cqrs_warehouse.messaging.errors import RoutingConfigError
from cqrs_warehouse.messaging.message import reads
from cqrs_warehouse.messaging.routing import parse_routing
from cqrs_warehouse.messaging.routing_lint import Finding, check
from cqrs_warehouse.runtime import build
from tests.conftest import settings_for
from tests.unit.listeners_files import FUNCTION_HANDLER, write

INCREASED = "Warehouse.Events.ProductQuantityIncreased.v1"
SHIPPED = "Warehouse.Events.ProductQuantityShipped.v1"
KEYS = [INCREASED, SHIPPED, "Warehouse.Events.NotifiedLowProductQuantity.v1"]
WATCH = "tests.slices.recorders.listeners:watch"


def routing(*entries):
    listeners = [
        {"name": f"l{n}", "handler": handler, "bindings": list(bindings)}
        for n, (handler, bindings) in enumerate(entries)
    ]
    document = {"exchange": {"name": "messaging"}, "listeners": listeners}
    return parse_routing(document, source="listeners.yaml")


def test_the_projects_file_has_nothing_to_say():
    runtime = build(settings_for("sqlite:///:memory:"), embedded=True)
    assert runtime.check_routing() == []


def test_a_listener_whose_bindings_match_no_known_event_type_is_an_error():
    found = check(routing((WATCH, ["#"]), (WATCH, ["Warehouse.Event.#", "Billing.*"])), KEYS)
    assert found == [
        Finding(
            True,
            "listeners[1] (l1)",
            "its bindings ['Warehouse.Event.#', 'Billing.*'] match no known event type, so it "
            "would never receive anything (is a schema folder missing?)",
        ),
        Finding(
            False,
            "listeners[1] (l1)",
            f"it has the handler of l0 ({WATCH}): both write the same tables",
        ),
    ]


def test_a_binding_matching_nothing_beside_one_that_matches_is_a_warning():
    [finding] = check(routing((FUNCTION_HANDLER, [f"{SHIPPED[:-3]}.*", "Billing.#"])), KEYS)
    assert finding == Finding(
        False, "listeners[0] (l0)", "binding 'Billing.#' matches no known event type"
    )


def test_a_binding_given_twice_is_a_warning():
    [finding] = check(routing((FUNCTION_HANDLER, [SHIPPED, SHIPPED])), KEYS)
    problem = f"binding {SHIPPED!r} is given more than once"
    assert finding == Finding(False, "listeners[0] (l0)", problem)


@reads("Warehouse.Events.ProductQuantityIncreased", 1)
def counts_stock(message):
    """Reads increases (and shipments): bound to shipments only, it would miss half."""


def test_a_type_the_handler_reads_and_its_bindings_do_not_receive_is_a_warning():
    found = check(routing((f"{__name__}:counts_stock", [SHIPPED])), KEYS)
    assert found == [
        Finding(
            False,
            "listeners[0] (l0)",
            "its handler reads Warehouse.Events.ProductQuantityIncreased, which none of its "
            "bindings receives",
        )
    ]


def test_the_runtime_refuses_an_error_naming_the_file_and_entry_and_logs_warnings(tmp_path, caplog):
    path = write(
        tmp_path,
        f"""\
        exchange: {{name: messaging}}
        listeners:
          - {{name: shipments, handler: "{FUNCTION_HANDLER}", bindings: ["{SHIPPED}", "X.#"]}}
          - {{name: nothing, handler: "{WATCH}", bindings: ["Billing.#"]}}
        """,
    )
    runtime = build(settings_for("sqlite:///:memory:", listeners_config=str(path)), embedded=True)
    with pytest.raises(RoutingConfigError) as refused:
        runtime.check_routing()
    assert str(refused.value) == (
        f"{path}: listeners[1] (nothing): its bindings ['Billing.#'] match no known event "
        "type, so it would never receive anything (is a schema folder missing?)"
    )
    path.write_text(path.read_text().replace('"Billing.#"', f'"{INCREASED}"'))
    runtime = build(settings_for("sqlite:///:memory:", listeners_config=str(path)), embedded=True)
    [warning] = runtime.check_routing()
    assert f"{path}: listeners[0] (shipments): binding 'X.#' matches no known event type" in (
        caplog.text
    )
    assert warning.where == "listeners[0] (shipments)"
