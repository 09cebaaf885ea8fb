"""Signed envelopes: the proof that a message comes from this service's own drain.

The drain's publishers sign every message they hand to a transport with an
HMAC-SHA256 (``MessageKeys.sign``), and the listener engine verifies it
before it decodes anything (``MessageKeys.verify``): a stream position is
believed only with that proof. The signature covers the fields that decide
what a listener does with a message (id, type, schema version, the Avro
payload bytes, stream, position, predecessors, correlation id and, for a
held message sent again, the version it was written with); it travels as
the envelope's ``signature`` (on RabbitMQ, the AMQP header of that name).

Keys come from MESSAGE_KEY: one or more, separated by commas; the first
signs, every one verifies, so a key is rotated without stopping anything
(README, "Signed messages"). docs/decisions/0019-signed-messages.md says why.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError, UntrustedMessageError

#: The shortest key accepted: 32 characters.
MIN_KEY_LENGTH = 32
#: The envelope field (and AMQP header) that carries the signature.
SIGNATURE = "signature"
#: The envelope fields the signature covers, besides the payload's bytes.
SIGNED_FIELDS = (
    "id",
    "type",
    "schema_version",
    "stream",
    "position",
    "predecessors",
    "correlation_id",
    "written_version",
)
_PREDECESSORS = SIGNED_FIELDS.index("predecessors")
# One encoder for every message: json.dumps with options builds one per call.
# (Not sort_keys, which doubles its time: the predecessors are sorted alone.)
_CANONICAL = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class MessageKeys:
    """The keys that sign (the first) and verify (every one) envelopes.

    Its repr never shows a key.
    """

    keys: tuple[bytes, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"<MessageKeys: {len(self.keys)} key(s)>"

    @classmethod
    def parse(cls, name: str, raw: str) -> MessageKeys:
        """Keys separated by commas (spaces around each are dropped), each of at
        least MIN_KEY_LENGTH characters. The error never shows a key."""
        keys = [part.strip() for part in raw.split(",")]
        for number, key in enumerate(keys, start=1):
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"{name}: key {number} of {len(keys)} has {len(key)} characters; "
                    f"each key needs at least {MIN_KEY_LENGTH}"
                )
        return cls(tuple(key.encode("utf-8") for key in keys))

    @classmethod
    def random(cls) -> MessageKeys:
        """A key of this process alone (the in-process broker's: nothing outside it publishes)."""
        return cls((secrets.token_bytes(32),))

    def sign(self, fields: Mapping[str, Any], payload: bytes) -> str:
        """The signature of an envelope's ``fields`` (SIGNED_FIELDS; one missing is
        None) and its Avro ``payload``."""
        return hmac.digest(self.keys[0], _content(fields, payload), "sha256").hex()

    def signed(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``envelope`` (its payload in base64) with its signature."""
        payload = base64.b64decode(envelope["payload"], validate=True)
        return {**envelope, SIGNATURE: self.sign(envelope, payload)}

    def verify(self, envelope: Any) -> None:
        """Raise UntrustedMessageError unless one of the keys signed ``envelope``.

        Checks nothing else: anything that cannot even be read for the check
        (a field of a type no envelope has) is untrusted too.
        """
        if not isinstance(envelope, Mapping):
            raise UntrustedMessageError("not an envelope, so it has no signature")
        signature = envelope.get(SIGNATURE)
        if not isinstance(signature, str) or not signature:
            raise UntrustedMessageError(
                "no signature: only messages that this service's drain published "
                "(signed with MESSAGE_KEY) are applied"
            )
        payload: Any = envelope.get("payload")
        try:
            content = _content(envelope, base64.b64decode(payload, validate=True))
            given = bytes.fromhex(signature)
        except (TypeError, ValueError, RecursionError, binascii.Error):
            raise UntrustedMessageError("its signed fields cannot be read") from None
        for key in self.keys:
            if hmac.compare_digest(hmac.digest(key, content, "sha256"), given):
                return
        raise UntrustedMessageError(
            "its signature was made with no key of MESSAGE_KEY: it was not published "
            "by this service's drain, or was changed on the way"
        )


def _content(fields: Mapping[str, Any], payload: bytes) -> bytes:
    """What is signed: the fields as canonical JSON, a NUL (which that JSON
    never holds), then the payload's bytes."""
    values = [fields.get(name) for name in SIGNED_FIELDS]
    predecessors = values[_PREDECESSORS]
    if isinstance(predecessors, dict):
        values[_PREDECESSORS] = sorted(predecessors.items())
    header = _CANONICAL.encode(values)
    return header.encode("ascii") + b"\0" + payload
