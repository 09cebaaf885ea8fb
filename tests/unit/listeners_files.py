"""What the listeners.yaml tests share: files written for a test, and how a refusal reads."""

import textwrap

import pytest

from cqrs_warehouse.messaging.errors import RoutingConfigError
from cqrs_warehouse.messaging.routing import load_routing
from tests.support.processes import ROOT

REAL_CONFIG = ROOT / "config" / "listeners.yaml"
#: A Handler class that needs nothing: the default builder builds it with no argument.
VIEW_HANDLER = "cqrs_warehouse.warehouse.views.products:ProductsView"
NOTIFIER_HANDLER = "cqrs_warehouse.warehouse.processors.low_quantity:LowQuantityNotifier"
#: A plain function handler (a user's own listener, in the tests' recorders slice).
FUNCTION_HANDLER = "tests.slices.recorders.listeners:record_shipment"

FIRST_LISTENER = f"""\
  - name: first
    handler: {VIEW_HANDLER}
    bindings: ["Warehouse.Events.#"]
"""


def write(tmp_path, text):
    path = tmp_path / "listeners.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def with_second_listener(tmp_path, entry):
    """A file whose first listener is valid and whose second is ``entry`` (YAML lines)."""
    body = "exchange:\n  name: messaging\n  type: topic\nlisteners:\n" + FIRST_LISTENER
    body += textwrap.indent(textwrap.dedent(entry), "  ")
    return write(tmp_path, body)


def refusal(path):
    with pytest.raises(RoutingConfigError) as caught:
        load_routing(path)
    return str(caught.value)


def assert_names_second_entry(path, message, name="second"):
    """The message names the file and the second entry, by index and (if it has one) name."""
    entry = "listeners[1]" if name is None else f"listeners[1] ({name})"
    assert message.startswith(f"{path}: {entry}"), message
