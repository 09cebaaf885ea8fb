"""The Avro schema registry over the repository's schemas/: plain Avro binary, refused
on write and on read when a payload does not fit."""

import io
import json

import fastavro
import pytest

from cqrs_warehouse.messaging.errors import (
    PayloadDecodeError,
    PayloadValidationError,
    SchemaError,
    UnknownSchemaError,
)
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from tests.conftest import SCHEMAS

INCREASED = "Warehouse.Events.ProductQuantityIncreased"
SHIPPED = "Warehouse.Events.ProductQuantityShipped"
NOTIFIED = "Warehouse.Events.NotifiedLowProductQuantity"

EXAMPLES = [
    (INCREASED, {"sku": "abc123", "quantity": 50}),
    (SHIPPED, {"sku": "abc123", "quantity": 40}),
    (NOTIFIED, {"sku": "abc123"}),
]


@pytest.fixture
def registry():
    return SchemaRegistry(SCHEMAS)


def fastavro_binary(message_type, payload):
    *folders, name = message_type.split(".")
    text = SCHEMAS.joinpath(*folders, f"{name}_v1.avsc").read_text(encoding="utf-8")
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(json.loads(text)), payload)
    return buffer.getvalue()


# --- the schema files -------------------------------------------------------


def test_available_lists_the_three_v1_warehouse_events(registry):
    assert registry.available() == [(NOTIFIED, 1), (INCREASED, 1), (SHIPPED, 1)]


def test_schema_path_puts_the_type_dots_as_folders_and_the_version_in_the_name(registry):
    expected = SCHEMAS / "Warehouse" / "Events" / "ProductQuantityShipped_v1.avsc"
    assert registry.schema_path(SHIPPED, 1) == expected


@pytest.mark.parametrize(("message_type", "payload"), EXAMPLES, ids=lambda v: str(v))
def test_each_v1_record_is_named_after_its_event(registry, message_type, payload):
    schema = registry.schema(message_type, 1)
    assert schema["name"] == message_type
    expected_fields = ["sku"] if message_type == NOTIFIED else ["sku", "quantity"]
    assert [field["name"] for field in schema["fields"]] == expected_fields


def test_available_ignores_files_that_are_not_versioned_schemas(tmp_path):
    (tmp_path / "A" / "B").mkdir(parents=True)
    (tmp_path / "A" / "B" / "Thing_v2.avsc").write_text("{}")
    (tmp_path / "A" / "B" / "Thing.avsc").write_text("{}")
    (tmp_path / "A" / "B" / "Thing_v0.avsc").write_text("{}")
    (tmp_path / "A" / "B" / "README.md").write_text("")
    assert SchemaRegistry(tmp_path).available() == [("A.B.Thing", 2)]


# --- round trip and wire format ---------------------------------------------


@pytest.mark.parametrize(("message_type", "payload"), EXAMPLES, ids=lambda v: str(v))
def test_decode_of_encode_equals_the_payload(registry, message_type, payload):
    data = registry.encode(message_type, 1, payload)
    assert registry.decode(message_type, 1, data) == payload


@pytest.mark.parametrize(("message_type", "payload"), EXAMPLES, ids=lambda v: str(v))
def test_encoded_payload_is_plain_avro_binary(registry, message_type, payload):
    data = registry.encode(message_type, 1, payload)
    assert data == fastavro_binary(message_type, payload)
    assert not data.startswith(b"Obj\x01")


def test_encoded_increase_is_the_sku_string_then_the_zigzag_long():
    data = SchemaRegistry(SCHEMAS).encode(INCREASED, 1, {"sku": "abc123", "quantity": 50})
    # string: zigzag length 6 -> 0x0c, then the UTF-8; long: zigzag 50 -> 0x64
    assert data == b"\x0cabc123\x64"


@pytest.mark.parametrize("quantity", [0, 1, -1, 2**31, 2**63 - 1, -(2**63)])
def test_round_trip_keeps_every_long_in_range(registry, quantity):
    payload = {"sku": "x", "quantity": quantity}
    assert registry.decode(INCREASED, 1, registry.encode(INCREASED, 1, payload)) == payload


def test_round_trip_keeps_a_non_ascii_sku(registry):
    payload = {"sku": "caf\u00e9-\u2603", "quantity": 1}
    assert registry.decode(SHIPPED, 1, registry.encode(SHIPPED, 1, payload)) == payload


# --- refused on write -------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "payload"),
    [
        (INCREASED, {"sku": "abc"}),
        (INCREASED, {"quantity": 5}),
        (INCREASED, {}),
        (INCREASED, {"sku": "abc", "quantity": 5, "colour": "red"}),
        (NOTIFIED, {"sku": "abc", "quantity": 5}),
        (INCREASED, {"sku": 5, "quantity": 5}),
        (INCREASED, {"sku": None, "quantity": 5}),
        (INCREASED, {"sku": b"abc", "quantity": 5}),
        (INCREASED, {"sku": "abc", "quantity": "5"}),
        (INCREASED, {"sku": "abc", "quantity": 1.5}),
        (INCREASED, {"sku": "abc", "quantity": None}),
        (INCREASED, {"sku": "abc", "quantity": True}),
        (INCREASED, {"sku": "abc", "quantity": False}),
        (INCREASED, {"sku": "abc", "quantity": 2**63}),
        (INCREASED, {"sku": "abc", "quantity": -(2**63) - 1}),
        (INCREASED, ["abc", 5]),
        (INCREASED, None),
        (INCREASED, "abc"),
    ],
    ids=[
        "missing-quantity",
        "missing-sku",
        "empty",
        "extra-field",
        "extra-quantity-on-notified",
        "int-sku",
        "null-sku",
        "bytes-sku",
        "string-quantity",
        "float-quantity",
        "null-quantity",
        "true-for-long",
        "false-for-long",
        "long-too-big",
        "long-too-small",
        "list-payload",
        "null-payload",
        "string-payload",
    ],
)
def test_encode_refuses_a_payload_that_does_not_fit_its_schema(registry, message_type, payload):
    with pytest.raises(PayloadValidationError):
        registry.encode(message_type, 1, payload)


def test_refusal_names_the_type_version_and_offending_field(registry):
    with pytest.raises(PayloadValidationError) as caught:
        registry.encode(INCREASED, 1, {"sku": "abc", "quantity": 5, "colour": "red"})
    assert f"{INCREASED} v1" in str(caught.value)
    assert "colour" in str(caught.value)


@pytest.mark.parametrize(
    ("message_type", "version"),
    [
        ("Warehouse.Events.NoSuchEvent", 1),
        ("NoSuchEvent", 1),
        (SHIPPED, 2),
        (SHIPPED, 0),
        (SHIPPED, -1),
        ("Warehouse.Events", 1),
        ("../Warehouse.Events.ProductQuantityShipped", 1),
        ("Warehouse/Events/ProductQuantityShipped", 1),
        ("Warehouse..Events.ProductQuantityShipped", 1),
        (".Warehouse.Events.ProductQuantityShipped", 1),
        ("Warehouse.Events.ProductQuantityShipped.", 1),
        ("..", 1),
        ("", 1),
        ("/etc/passwd", 1),
        ("Warehouse.Events.ProductQuantityShipped_v1.avsc", 1),
        ("Warehouse.Events.Product QuantityShipped", 1),
    ],
    ids=lambda v: str(v),
)
def test_encode_refuses_an_unknown_type_or_version(registry, message_type, version):
    with pytest.raises(UnknownSchemaError):
        registry.encode(message_type, version, {"sku": "abc", "quantity": 5})


def test_decode_refuses_an_unknown_type_or_version(registry):
    data = registry.encode(SHIPPED, 1, {"sku": "abc", "quantity": 5})
    with pytest.raises(UnknownSchemaError):
        registry.decode(SHIPPED, 2, data)
    with pytest.raises(UnknownSchemaError):
        registry.decode("../../etc.passwd", 1, data)


def test_schema_file_that_is_not_valid_avro_is_an_unknown_schema(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "Broken_v1.avsc").write_text('{"type": "record", "name": "Broken"')
    (tmp_path / "A" / "Bad_v1.avsc").write_text('{"type": "no-such-avro-type"}')
    registry = SchemaRegistry(tmp_path)
    for message_type in ("A.Broken", "A.Bad"):
        with pytest.raises(UnknownSchemaError, match="not a valid Avro schema"):
            registry.encode(message_type, 1, {})


def test_every_schema_refusal_is_a_schema_error():
    for error in (UnknownSchemaError, PayloadValidationError, PayloadDecodeError):
        assert issubclass(error, SchemaError)


# --- refused on read --------------------------------------------------------


@pytest.fixture
def shipped_bytes(registry):
    return registry.encode(SHIPPED, 1, {"sku": "abc123", "quantity": 40})


def test_decode_refuses_truncated_bytes(registry, shipped_bytes):
    for end in range(len(shipped_bytes)):
        with pytest.raises(PayloadDecodeError):
            registry.decode(SHIPPED, 1, shipped_bytes[:end])


@pytest.mark.parametrize("extra", [b"\x00", b"\x02", b"\x0cabc123\x64"])
def test_decode_refuses_trailing_bytes(registry, shipped_bytes, extra):
    with pytest.raises(PayloadDecodeError, match="left over"):
        registry.decode(SHIPPED, 1, shipped_bytes + extra)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 12,  # a varint that never ends
        b"\x01abc\x02",  # negative string length
        b"\x06\xff\xfe\xfd\x02",  # a string that is not UTF-8
        b"\x7e",  # string length 63, far beyond the data
        b"not avro at all",
    ],
    ids=["endless-varint", "negative-length", "not-utf8", "length-beyond-data", "text"],
)
def test_decode_refuses_garbage(registry, data):
    with pytest.raises(PayloadDecodeError):
        registry.decode(SHIPPED, 1, data)


def test_decode_refuses_an_avro_container_file(registry):
    buffer = io.BytesIO()
    schema = registry.schema(SHIPPED, 1)
    fastavro.writer(buffer, schema, [{"sku": "abc123", "quantity": 40}])
    with pytest.raises(PayloadDecodeError):
        registry.decode(SHIPPED, 1, buffer.getvalue())


def test_decode_refuses_bytes_written_with_another_events_schema(registry):
    # A NotifiedLowProductQuantity record lacks the quantity a Shipped one needs.
    data = registry.encode(NOTIFIED, 1, {"sku": "abc123"})
    with pytest.raises(PayloadDecodeError):
        registry.decode(SHIPPED, 1, data)
