"""Signed envelopes (``messaging.signing``), MESSAGE_KEY, and the envelope's
field limits (``messaging.envelope``): no server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cqrs_warehouse.messaging.envelope import envelope_of, message_from_envelope
from cqrs_warehouse.messaging.errors import (
    ConfigurationError,
    PayloadDecodeError,
    UntrustedMessageError,
)
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.signing import SIGNATURE, MessageKeys
from cqrs_warehouse.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
OLD = "old-key-" + "o" * 32
NEW = "new-key-" + "n" * 32
INCREASED = "Warehouse.Events.ProductQuantityIncreased"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)


def keys(raw: str) -> MessageKeys:
    return MessageKeys.parse("MESSAGE_KEY", raw)


def envelope(registry: SchemaRegistry, **changes: object) -> dict:
    message = Message(
        id="3f0c6a8e-0d7c-4c69-9d55-6d2b8a1f0e11",
        type=INCREASED,
        schema_version=1,
        payload={"sku": "abc", "quantity": 3},
        stream="abc",
        position=4,
        predecessors={f"{INCREASED}.v1": 3},
        correlation_id="request-1",
    )
    return {**envelope_of(message, registry), **changes}


def test_a_signed_envelope_verifies_and_any_change_to_a_signed_field_does_not(registry):
    signer = keys(NEW)
    signed = signer.signed(envelope(registry))
    signer.verify(signed)  # no error
    changes = {
        "id": "another-id",
        "type": "Warehouse.Events.ProductQuantityShipped",
        "schema_version": 2,
        "payload": base64.b64encode(b"\x06abc\x08").decode("ascii"),
        "stream": "xyz",
        "position": 10**15,
        "predecessors": {f"{INCREASED}.v1": 2},
        "correlation_id": "request-2",
        "written_version": 2,
    }
    for name, value in changes.items():
        with pytest.raises(UntrustedMessageError, match="no key of MESSAGE_KEY"):
            signer.verify({**signed, name: value})
    # Fields outside the signature (the in-process delivery's record id) are free.
    signer.verify({**signed, "delivery": 7})


@pytest.mark.parametrize(
    "signature",
    [None, "", "not hex", "00" * 32, 42, ["a"]],
    ids=["none", "empty", "not-hex", "zeros", "int", "list"],
)
def test_a_missing_or_wrong_signature_is_untrusted(registry, signature):
    unsigned = envelope(registry)
    if signature is not None:
        unsigned[SIGNATURE] = signature
    with pytest.raises(UntrustedMessageError):
        keys(NEW).verify(unsigned)


@pytest.mark.parametrize(
    "garbage",
    [
        {"position": object()},
        {"predecessors": {1: 2, "a": 3}},
        {"payload": 12},
        {"payload": "not base64!"},
        {"id": 10**5000},
    ],
    ids=["object", "mixed-keys", "payload-int", "payload-text", "huge-int"],
)
def test_fields_of_no_envelope_type_are_untrusted_not_an_error(registry, garbage):
    forged = {**envelope(registry), SIGNATURE: "ab" * 32, **garbage}
    with pytest.raises(UntrustedMessageError):
        keys(NEW).verify(forged)
    with pytest.raises(UntrustedMessageError):
        keys(NEW).verify(["not", "a", "mapping"])


def test_rotation_the_first_key_signs_and_every_key_verifies(registry):
    by_old = keys(OLD).signed(envelope(registry))
    by_new = keys(NEW).signed(envelope(registry))
    both = keys(f"{NEW}, {OLD}")
    both.verify(by_old)
    both.verify(by_new)
    assert both.signed(envelope(registry))[SIGNATURE] == by_new[SIGNATURE]
    keys(NEW).verify(by_new)
    with pytest.raises(UntrustedMessageError):
        keys(NEW).verify(by_old)


def test_message_key_refuses_short_keys_without_showing_them():
    secret = "s" * 31
    for raw in (secret, f"{NEW},{secret}", f"{NEW},"):
        with pytest.raises(ConfigurationError, match="at least 32") as refused:
            Settings.from_env({"MESSAGE_KEY": raw})
        assert secret not in str(refused.value)


def test_settings_never_show_the_key():
    settings = Settings.from_env({"MESSAGE_KEY": f"{NEW},{OLD}"})
    assert settings.message_keys == keys(f"{NEW},{OLD}")
    for text in (repr(settings), str(settings), repr(settings.message_keys)):
        assert NEW not in text and OLD not in text and "2 key(s)" in text
    assert Settings.from_env({}).message_keys is None


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("id", "i" * 37, "its id has 37 characters (at most 36)"),
        ("type", "T" * 256, "its type has 256 characters (at most 255)"),
        ("stream", "s" * 256, "its stream has 256 characters (at most 255)"),
        ("correlation_id", "c" * 65, "its correlation_id has 65 characters (at most 64)"),
        ("payload", "A" * (4 * (1 << 20) // 3 + 8), "a payload over 1048576 bytes"),
        ("predecessors", {f"k{n}.v1": n for n in range(65)}, "predecessors"),
        ("predecessors", {"k" * 256: 1}, "predecessors"),
        ("position", 1 << 63, "position"),
        ("schema_version", 1 << 31, "v2147483648"),
    ],
)
def test_an_envelope_over_a_field_limit_is_malformed_and_the_error_names_the_field(
    registry, field, value, named
):
    with pytest.raises(PayloadDecodeError, match="malformed envelope") as refused:
        message_from_envelope(envelope(registry, **{field: value}), registry)
    assert named in str(refused.value)
    assert len(str(refused.value)) < 400  # never the whole value


def test_an_envelope_at_every_limit_is_read(registry):
    payload = base64.b64encode(b"\x06abc\x08").decode("ascii")  # sku "abc", quantity 4
    at_limits = envelope(
        registry,
        id="i" * 36,
        stream="s" * 255,
        correlation_id="c" * 64,
        payload=payload,
        predecessors={f"{'k' * 250}{n:02}": n for n in range(64)},
        position=(1 << 63) - 1,
    )
    message = message_from_envelope(at_limits, registry)
    assert (message.id, message.stream, message.position) == ("i" * 36, "s" * 255, (1 << 63) - 1)
