"""listeners.yaml: each malformed file stops with one clear error that names the
file and the offending entry."""

import pytest

from tests.unit.listeners_files import (
    FUNCTION_HANDLER,
    VIEW_HANDLER,
    assert_names_second_entry,
    refusal,
    with_second_listener,
    write,
)

# --- the file itself --------------------------------------------------------


def test_missing_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    message = refusal(path)
    assert str(path) in message
    assert "cannot read" in message


def test_invalid_yaml_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, "exchange: {name: messaging\nlisteners: [\n")
    message = refusal(path)
    assert message.startswith(f"{path}: ")
    assert "not valid YAML" in message


@pytest.mark.parametrize(
    "text", ["", "- exchange\n- listeners\n", "just a string\n", "42\n"], ids=repr
)
def test_document_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    message = refusal(path)
    assert message.startswith(f"{path}: top level: ")
    assert "mapping" in message


def test_unknown_top_level_key_is_refused_naming_it(tmp_path):
    path = write(
        tmp_path,
        "exchange: {name: messaging}\nlisteners: []\nlistener: []\n",
    )
    message = refusal(path)
    assert message.startswith(f"{path}: top level: ")
    assert "unknown keys ['listener']" in message


@pytest.mark.parametrize("missing", ["exchange", "listeners"])
def test_missing_top_level_key_is_refused_naming_it(tmp_path, missing):
    document = {"exchange": "exchange: {name: messaging}\n", "listeners": "listeners: []\n"}
    del document[missing]
    path = write(tmp_path, "".join(document.values()))
    message = refusal(path)
    assert message.startswith(f"{path}: top level: ")
    assert f"missing keys ['{missing}']" in message


# --- the exchange -----------------------------------------------------------


@pytest.mark.parametrize("exchange_type", ["direct", "fanout", "headers", "Topic"])
def test_exchange_type_other_than_topic_is_refused(tmp_path, exchange_type):
    path = write(tmp_path, f"exchange: {{name: messaging, type: {exchange_type}}}\nlisteners: []\n")
    message = refusal(path)
    assert message.startswith(f"{path}: exchange.type: ")
    assert repr(exchange_type) in message


@pytest.mark.parametrize(
    "name",
    ["''", "'has space'", "'a/b'", "5", "null", '"messaging\\n"'],
    ids=["empty", "space", "slash", "number", "null", "newline"],
)
def test_invalid_exchange_name_is_refused(tmp_path, name):
    path = write(tmp_path, f"exchange: {{name: {name}}}\nlisteners: []\n")
    assert refusal(path).startswith(f"{path}: exchange.name: ")


def test_exchange_that_is_not_a_mapping_is_refused(tmp_path):
    path = write(tmp_path, "exchange: messaging\nlisteners: []\n")
    assert refusal(path).startswith(f"{path}: exchange: ")


def test_unknown_exchange_key_is_refused_naming_it(tmp_path):
    path = write(tmp_path, "exchange: {name: messaging, durable: true}\nlisteners: []\n")
    message = refusal(path)
    assert message.startswith(f"{path}: exchange: ")
    assert "unknown keys ['durable']" in message


def test_listeners_that_is_not_a_list_is_refused(tmp_path):
    path = write(tmp_path, f"exchange: {{name: messaging}}\nlisteners:\n  first: {VIEW_HANDLER}\n")
    assert refusal(path).startswith(f"{path}: listeners: ")


# --- a listener entry -------------------------------------------------------


def test_unknown_listener_key_is_refused_naming_the_entry_and_key(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {VIEW_HANDLER}
          bindings: ["#"]
          queue: custom
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert "unknown keys ['queue']" in message


def test_listener_without_a_name_is_refused_naming_the_entry_by_index(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - handler: {VIEW_HANDLER}
          bindings: ["#"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message, name=None)
    assert "missing keys ['name']" in message


@pytest.mark.parametrize("missing", ["handler", "bindings"])
def test_listener_missing_a_required_key_is_refused_naming_the_entry_and_key(tmp_path, missing):
    lines = {"handler": f"  handler: {VIEW_HANDLER}\n", "bindings": '  bindings: ["#"]\n'}
    del lines[missing]
    path = with_second_listener(tmp_path, "- name: second\n" + "".join(lines.values()))
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert f"missing keys ['{missing}']" in message


def test_duplicate_listener_names_are_refused_naming_the_second_entry(tmp_path):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: first
          handler: {FUNCTION_HANDLER}
          bindings: ["#"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message, name="first")
    assert "duplicate" in message


@pytest.mark.parametrize(
    "name",
    ["'1abc'", "'has space'", "'a-b'", "'a.b'", "''", "5", "x" * 101, '"abc\\n"'],
    ids=["digit-first", "space", "dash", "dot", "empty", "number", "101-chars", "newline"],
)
def test_listener_name_that_cannot_name_a_queue_is_refused(tmp_path, name):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: {name}
          handler: {VIEW_HANDLER}
          bindings: ["#"]
          retry: {{max_attempts: 1}}
        """,
    )
    message = refusal(path)
    assert message.startswith(f"{path}: listeners[1]")
    assert "name" in message


def test_listener_entry_that_is_not_a_mapping_is_refused(tmp_path):
    path = with_second_listener(tmp_path, f"- {VIEW_HANDLER}\n")
    message = refusal(path)
    assert_names_second_entry(path, message, name=None)
    assert "mapping" in message


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        ("no_such_module_for_routing_tests:handle", "cannot be imported"),
        ("cqrs_warehouse.warehouse.views.products:no_such_function", "has no 'no_such_function'"),
        ("cqrs_warehouse.warehouse.views.products.ProductsView", "module.path:callable"),
        ("cqrs_warehouse.warehouse.views.products:", "module.path:callable"),
        (":ProductsView", "module.path:callable"),
        ("cqrs_warehouse.warehouse.views.products:ProductsView()", "module.path:callable"),
        ("cqrs_warehouse.warehouse.events:PRODUCT_QUANTITY_SHIPPED", "not callable"),
    ],
)
def test_handler_that_cannot_be_imported_as_a_callable_is_refused(tmp_path, handler, problem):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: "{handler}"
          bindings: ["#"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert repr(handler) in message
    assert problem in message


def test_handler_that_is_not_a_string_is_refused(tmp_path):
    path = with_second_listener(
        tmp_path,
        """\
        - name: second
          handler: [cqrs_warehouse.warehouse.views.products, ProductsView]
          bindings: ["#"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert "module.path:callable" in message


def test_handler_module_that_fails_on_import_is_refused(tmp_path, monkeypatch):
    module_name = "broken_listener_module_for_routing_test"
    (tmp_path / f"{module_name}.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {module_name}:handle
          bindings: ["#"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert "boom at import" in message


@pytest.mark.parametrize(
    "binding", ["a..b", ".a", "a.", "a*", "#a", "a.b#", "", "Warehouse.Events.#.v1*"]
)
def test_invalid_binding_pattern_is_refused_naming_the_entry_and_pattern(tmp_path, binding):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {VIEW_HANDLER}
          bindings: ["Warehouse.Events.#", "{binding}"]
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert "invalid binding" in message


@pytest.mark.parametrize("bindings", ["[]", '"Warehouse.Events.#"', "null", "{a: b}", "[5]"])
def test_bindings_that_are_not_a_non_empty_list_of_patterns_are_refused(tmp_path, bindings):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {VIEW_HANDLER}
          bindings: {bindings}
        """,
    )
    message = refusal(path)
    assert_names_second_entry(path, message)
    assert "binding" in message


@pytest.mark.parametrize(
    ("retry", "problem"),
    [
        ("{max_attempts: 0}", "max_attempts"),
        ("{max_attempts: -1}", "max_attempts"),
        ("{max_attempts: 101}", "max_attempts"),
        ("{max_attempts: true}", "max_attempts"),
        ("{max_attempts: 2.5}", "max_attempts"),
        ("{max_attempts: '3'}", "max_attempts"),
        ("{min_delay: -1}", "min_delay"),
        ("{min_delay: false}", "min_delay"),
        ("{max_delay: '30'}", "max_delay"),
        ("{max_delay: 86401}", "max_delay"),
        ("{min_delay: 10, max_delay: 5}", "greater than max_delay"),
        ("{min_delay: 40}", "greater than max_delay"),
        ("{attempts: 3}", "unknown keys ['attempts']"),
        ("[3]", "mapping"),
        ("3", "mapping"),
    ],
)
def test_bad_retry_policy_is_refused_naming_the_entry(tmp_path, retry, problem):
    path = with_second_listener(
        tmp_path,
        f"""\
        - name: second
          handler: {VIEW_HANDLER}
          bindings: ["#"]
          retry: {retry}
        """,
    )
    message = refusal(path)
    assert message.startswith(f"{path}: listeners[1] (second) retry: "), message
    assert problem in message
