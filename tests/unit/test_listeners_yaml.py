"""listeners.yaml: the real file loads; each malformed file stops with one clear error
that names the file and the offending entry.

A handler is a plain function (wrapped in ``FunctionHandler``) or a ``Handler``
class: ``load_routing`` builds a class with no argument unless given a
builder (the runtime passes its own, which hands a handler its slice's services).
"""

import re

import pytest

from cqrs_warehouse.messaging.archive import Archive
from cqrs_warehouse.messaging.errors import RoutingConfigError
from cqrs_warehouse.messaging.handler import FunctionHandler, Handler
from cqrs_warehouse.messaging.routing import (
    Exchange,
    RetryPolicy,
    default_handler,
    load_routing,
    parse_routing,
)
from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.processors.low_quantity import LowQuantityNotifier
from cqrs_warehouse.warehouse.views.products import ProductsView
from tests.conftest import settings_for
from tests.slices.recorders.listeners import record_shipment
from tests.unit.listeners_files import (
    FIRST_LISTENER,
    FUNCTION_HANDLER,
    NOTIFIER_HANDLER,
    REAL_CONFIG,
    VIEW_HANDLER,
    assert_names_second_entry,
    refusal,
    with_second_listener,
    write,
)


def real_routing():
    """The real file as the runtime loads it: each handler built with its slice's
    services (nothing connects: building a runtime opens no connection)."""
    return build(settings_for("sqlite:///:memory:"), embedded=True).routing


# --- the real file ----------------------------------------------------------


def test_real_listeners_yaml_declares_the_messaging_topic_exchange():
    routing = real_routing()
    assert routing.exchange == Exchange(name="messaging", type="topic")
    assert routing.source == str(REAL_CONFIG)


def test_real_listeners_yaml_declares_the_view_the_notifier_and_the_archive():
    routing = real_routing()
    assert [spec.name for spec in routing.listeners] == [
        "products_view",
        "low_product_quantity_notifier",
        "archive",
    ]
    view, notifier, archive = routing.listeners
    assert isinstance(archive.handler, Archive)
    assert archive.handler_path == "cqrs_warehouse.messaging.archive:Archive"
    assert archive.bindings == ("#",)
    # The view declares its own reset (it can be rebuilt); the notifier runs
    # commands, so it declares none.
    assert view.reset is not None and view.reset.__func__ is ProductsView.reset
    assert notifier.reset is None
    assert type(view.handler) is ProductsView
    assert view.handler_path == VIEW_HANDLER
    assert type(notifier.handler) is LowQuantityNotifier
    assert notifier.handler_path == NOTIFIER_HANDLER
    assert view.bindings == notifier.bindings == ("Warehouse.Events.#",)
    assert view.retry == notifier.retry == RetryPolicy()


def test_the_default_builder_cannot_build_a_handler_that_needs_its_slices_services():
    # The notifier needs the warehouse's services: only the runtime's builder has them.
    message = refusal(REAL_CONFIG)
    assert message.startswith(f"{REAL_CONFIG}: listeners[1] (low_product_quantity_notifier): ")
    assert f"handler {NOTIFIER_HANDLER!r} cannot be built" in message


def test_real_listeners_yaml_routes_warehouse_events_to_the_slices_and_all_to_the_archive():
    routing = real_routing()
    for event in (
        "ProductQuantityIncreased",
        "ProductQuantityShipped",
        "NotifiedLowProductQuantity",
    ):
        names = [spec.name for spec in routing.listeners_for(f"Warehouse.Events.{event}.v1")]
        assert names == ["products_view", "low_product_quantity_notifier", "archive"]
    assert [spec.name for spec in routing.listeners_for("Other.Events.Thing.v1")] == ["archive"]


# --- valid variations -------------------------------------------------------


def test_exchange_type_defaults_to_topic(tmp_path):
    path = write(tmp_path, "exchange:\n  name: messaging\nlisteners:\n" + FIRST_LISTENER)
    assert load_routing(path).exchange == Exchange(name="messaging", type="topic")


def test_a_listener_may_set_its_retry_policy(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {FUNCTION_HANDLER}
          bindings: ["Warehouse.Events.*.v1", "Other.#"]
          retry: {{max_attempts: 3, min_delay: 0, max_delay: 2.5}}
        """,
    )
    routing = load_routing(path)
    second = routing.listener("second")
    assert second.retry == RetryPolicy(max_attempts=3, min_delay=0.0, max_delay=2.5)
    assert second.bindings == ("Warehouse.Events.*.v1", "Other.#")
    assert routing.listener("first").retry == RetryPolicy()


def test_a_listener_may_point_to_a_users_own_module(tmp_path, monkeypatch):
    module_name = "user_listener_module_for_routing_test"
    (tmp_path / f"{module_name}.py").write_text("def handle(message):\n    return message\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: mine
          handler: {module_name}:handle
          bindings: ["#"]
        """,
    )
    spec = load_routing(path).listener("mine")
    assert isinstance(spec.handler, FunctionHandler)
    assert spec.handler.function.__module__ == module_name
    assert spec.handler.function("hello") == "hello"
    assert spec.handler.name == f"{module_name}:handle"
    assert spec.reads == {} and spec.reset is None


def test_a_plain_function_handler_is_wrapped(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {FUNCTION_HANDLER}
          bindings: ["Warehouse.Events.ProductQuantityShipped.*"]
        """,
    )
    spec = load_routing(path).listener("second")
    assert isinstance(spec.handler, FunctionHandler)
    assert spec.handler.function is record_shipment
    assert spec.handler_path == FUNCTION_HANDLER


def test_a_function_handler_declares_what_it_reads_with_reads(tmp_path, monkeypatch):
    module_name = "user_reading_listener_module_for_routing_test"
    (tmp_path / f"{module_name}.py").write_text(
        "from cqrs_warehouse.messaging import reads\n\n"
        "@reads('Warehouse.Events.ProductQuantityShipped', 1)\n"
        "def handle(message):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: mine
          handler: {module_name}:handle
          bindings: ["#"]
        """,
    )
    spec = load_routing(path).listener("mine")
    assert isinstance(spec.handler, FunctionHandler)
    assert spec.reads == {"Warehouse.Events.ProductQuantityShipped": 1}


def test_a_users_handler_class_is_built_with_no_argument_by_default(tmp_path, monkeypatch):
    module_name = "user_handler_class_module_for_routing_test"
    (tmp_path / f"{module_name}.py").write_text(
        "from cqrs_warehouse.messaging import Handler\n\n"
        "class Mine(Handler):\n"
        "    reads = {'Warehouse.Events.ProductQuantityShipped': 1}\n"
        "    def __init__(self):\n"
        "        self.built = True\n"
        "    def apply(self, message):\n"
        "        pass\n"
        "    def reset(self):\n"
        "        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: mine
          handler: {module_name}:Mine
          bindings: ["#"]
        """,
    )
    spec = load_routing(path).listener("mine")
    assert type(spec.handler).__name__ == "Mine" and spec.handler.built
    assert spec.reads == {"Warehouse.Events.ProductQuantityShipped": 1}
    assert spec.reset is not None and spec.reset.__func__ is type(spec.handler).reset


def test_a_given_builder_builds_every_handler_from_what_its_path_names(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {FUNCTION_HANDLER}
          bindings: ["#"]
        """,
    )
    named = []

    def builder(target):
        named.append(target)
        return default_handler(target)

    routing = load_routing(path, build=builder)
    assert named == [ProductsView, record_shipment]
    assert [type(spec.handler) for spec in routing.listeners] == [ProductsView, FunctionHandler]


def test_a_handler_the_builder_fails_on_is_refused_naming_the_entry(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {FUNCTION_HANDLER}
          bindings: ["#"]
        """,
    )

    def builder(target):
        if target is record_shipment:
            raise ValueError("no services for it")
        return default_handler(target)

    with pytest.raises(RoutingConfigError) as caught:
        load_routing(path, build=builder)
    message = str(caught.value)
    assert_names_second_entry(path, message)
    assert f"handler {FUNCTION_HANDLER!r} cannot be built" in message
    assert "no services for it" in message


def test_the_default_builder_builds_handler_classes_and_wraps_functions():
    assert type(default_handler(ProductsView)) is ProductsView
    wrapped = default_handler(record_shipment)
    assert isinstance(wrapped, FunctionHandler) and wrapped.function is record_shipment
    assert isinstance(wrapped, Handler)


def test_an_empty_listeners_list_is_accepted(tmp_path):
    path = write(tmp_path, "exchange: {name: messaging}\nlisteners: []\n")
    assert load_routing(path).listeners == ()


# --- parse_routing ----------------------------------------------------------


def test_parse_routing_names_the_given_source_in_its_errors():
    document = {"exchange": {"name": "messaging"}, "listeners": [{"name": "x"}]}
    with pytest.raises(RoutingConfigError, match=re.escape("somewhere.yaml: listeners[0] (x)")):
        parse_routing(document, source="somewhere.yaml")


def test_parse_routing_builds_the_same_config_as_load_routing():
    document = {
        "exchange": {"name": "messaging", "type": "topic"},
        "listeners": [{"name": "view", "handler": VIEW_HANDLER, "bindings": ["#"]}],
    }
    routing = parse_routing(document, source="inline")
    assert routing.source == "inline"
    assert routing.exchange == Exchange(name="messaging")
    [spec] = routing.listeners
    assert (spec.name, type(spec.handler), spec.bindings) == ("view", ProductsView, ("#",))
