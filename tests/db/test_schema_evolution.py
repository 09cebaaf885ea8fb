"""Schema evolution: handlers read the version they declare; messages written
with another version of the record are resolved by Avro's reader/writer
rules. A v2 of ProductQuantityIncreased adds an optional field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cqrs_warehouse.messaging.message import Message, reads
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from cqrs_warehouse.warehouse.views.products import list_products
from tests.db.listening import listener, warehouse_handler
from tests.support.environment import SCHEMAS

INCREASED_V2 = {
    "type": "record",
    "name": "ProductQuantityIncreased",
    "namespace": "Warehouse.Events",
    "fields": [
        {"name": "sku", "type": "string"},
        {"name": "quantity", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


def schemas_with(tmp_path: Path, name: str, schema: dict) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, root)
    (root / "Warehouse" / "Events" / name).write_text(json.dumps(schema))
    return root


@pytest.fixture
def engine_v2(runtime_with, tmp_path):
    """The engine of a runtime whose SCHEMAS_DIR holds a v2 of ProductQuantityIncreased."""
    schemas = schemas_with(tmp_path, "ProductQuantityIncreased_v2.avsc", INCREASED_V2)
    return runtime_with(schemas_dir=str(schemas)).engine


@pytest.fixture
def view(runtime):
    return listener("products_view", warehouse_handler(runtime, "view"))


def increased(sku: str, quantity: int, version: int, note: str | None = None) -> Message:
    payload: dict = {"sku": sku, "quantity": quantity}
    if version == 2:
        payload["note"] = note
    return Message(type=PRODUCT_QUANTITY_INCREASED, schema_version=version, payload=payload)


def v2_reader(received: list[Message]):
    @reads(PRODUCT_QUANTITY_INCREASED, 2)
    def handle(message: Message) -> None:
        received.append(message)

    return listener("v2_reader", handle)


def test_a_v1_handler_receives_v2_messages_resolved_into_v1(engine_v2, view, sku):
    assert view.reads[PRODUCT_QUANTITY_INCREASED] == 1  # the view reads v1
    assert feed(engine_v2, view, increased(sku, 5, 2, note="pallet 7"))
    assert list_products() == [{"sku": sku, "quantity": 5}]


def test_a_v2_handler_receives_v1_messages_with_the_new_field_defaulted(engine_v2, sku):
    received: list[Message] = []
    feed(engine_v2, v2_reader(received), increased(sku, 3, 1))
    [message] = received
    assert message.schema_version == 2
    assert message.payload == {"sku": sku, "quantity": 3, "note": None}
    # It was routed as written: a v1 message
    assert message.routing_key == f"{PRODUCT_QUANTITY_INCREASED}.v1"


def test_mixed_traffic_reaches_v1_and_v2_handlers_each_in_its_version(engine_v2, view, sku):
    received: list[Message] = []
    v2 = v2_reader(received)
    traffic = [increased(sku, 1, 1), increased(sku, 2, 2, "b"), increased(sku, 4, 1)]
    for message in traffic:
        feed(engine_v2, v2, message)
        feed(engine_v2, view, message)
    assert [m.payload for m in received] == [
        {"sku": sku, "quantity": 1, "note": None},
        {"sku": sku, "quantity": 2, "note": "b"},
        {"sku": sku, "quantity": 4, "note": None},
    ]
    assert list_products() == [{"sku": sku, "quantity": 7}]


def test_the_schemas_in_the_repository_resolve_against_their_earlier_versions():
    assert SchemaRegistry(SCHEMAS).compatibility_problems() == []


def test_an_added_optional_field_is_a_compatible_change(tmp_path):
    registry = SchemaRegistry(
        schemas_with(tmp_path, "ProductQuantityIncreased_v2.avsc", INCREASED_V2)
    )
    assert registry.compatibility_problems() == []


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"name": "note", "type": "string"}, id="new-field-without-default"),
        pytest.param({"name": "quantity", "type": "string"}, id="changed-type"),
    ],
)
def test_a_breaking_change_is_refused(tmp_path, field):
    fields = [f for f in INCREASED_V2["fields"] if f["name"] not in ("note", field["name"])]
    broken = {**INCREASED_V2, "fields": [*fields, field]}
    registry = SchemaRegistry(schemas_with(tmp_path, "ProductQuantityIncreased_v2.avsc", broken))
    problems = registry.compatibility_problems()
    assert problems
    assert all(PRODUCT_QUANTITY_INCREASED in problem for problem in problems)
