"""The Avro schema registry over ``schemas/``: validate and encode on write,
decode and validate on read. Used by the outbox (write) and the listener
runner (read); tests use it through ``messaging.testing``.

A message of type ``A.B.C`` at version ``N`` is described by
``schemas/A/B/C_vN.avsc``. Payloads are plain Avro binary: no container
header, no registry framing.
"""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError

from .errors import PayloadDecodeError, PayloadValidationError, UnknownSchemaError

_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_SCHEMA_FILE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)_v(?P<version>[1-9][0-9]*)\.avsc$")


class SchemaRegistry:
    """Parsed schemas, loaded on first use and kept for the process's life."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._parsed: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def schema_path(self, message_type: str, schema_version: int) -> Path:
        if not _TYPE_NAME.fullmatch(message_type) or schema_version < 1:
            raise UnknownSchemaError(
                f"not a message type and version: {message_type!r} v{schema_version!r}"
            )
        *folders, name = message_type.split(".")
        return self.root.joinpath(*folders, f"{name}_v{schema_version}.avsc")

    def schema(self, message_type: str, schema_version: int) -> Any:
        key = (message_type, schema_version)
        parsed = self._parsed.get(key)
        if parsed is None:
            with self._lock:
                parsed = self._parsed.get(key)
                if parsed is None:
                    parsed = self._parsed[key] = self._load(message_type, schema_version)
        return parsed

    def _load(self, message_type: str, schema_version: int) -> Any:
        path = self.schema_path(message_type, schema_version)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownSchemaError(
                f"no schema for {message_type} v{schema_version}: {path} does not exist"
            ) from None
        try:
            return fastavro.parse_schema(json.loads(text))
        except (ValueError, fastavro.schema.SchemaParseException) as error:
            raise UnknownSchemaError(f"{path} is not a valid Avro schema: {error}") from error

    def encode(self, message_type: str, schema_version: int, payload: dict[str, Any]) -> bytes:
        """Validate ``payload`` against its schema and return its Avro binary."""
        schema = self.schema(message_type, schema_version)
        self._validate(schema, payload, message_type, schema_version)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, payload)
        return buffer.getvalue()

    def decode(self, message_type: str, schema_version: int, data: bytes) -> dict[str, Any]:
        """Read Avro binary written with the schema, refusing anything else."""
        schema = self.schema(message_type, schema_version)
        buffer = io.BytesIO(data)
        try:
            payload = fastavro.schemaless_reader(buffer, schema)
        except Exception as error:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise PayloadDecodeError(
                f"{message_type} v{schema_version}: payload is not valid Avro binary: {error!r}"
            ) from error
        if buffer.tell() != len(data):
            raise PayloadDecodeError(
                f"{message_type} v{schema_version}: {len(data) - buffer.tell()} bytes "
                "left over after the record"
            )
        if not isinstance(payload, dict):
            raise PayloadDecodeError(f"{message_type} v{schema_version}: payload is not a record")
        self._validate(schema, payload, message_type, schema_version)
        return payload

    def available(self) -> list[tuple[str, int]]:
        """Every (type, version) that has a schema file, sorted."""
        found = []
        for path in self.root.rglob("*.avsc"):
            match = _SCHEMA_FILE.fullmatch(path.name)
            if match is None:
                continue
            folders = path.parent.relative_to(self.root).parts
            message_type = ".".join((*folders, match["name"]))
            found.append((message_type, int(match["version"])))
        return sorted(found)

    @staticmethod
    def _validate(schema: Any, payload: Any, message_type: str, schema_version: int) -> None:
        where = f"{message_type} v{schema_version}"
        if not isinstance(payload, dict):
            raise PayloadValidationError(f"{where}: payload must be a record (a dict)")
        # fastavro's validate ignores keys the record does not declare, even
        # with strict=True; an unknown key is a caller's mistake, so refuse it.
        declared = {f["name"] for f in schema.get("fields", ())}
        unknown = sorted(set(payload) - declared)
        if unknown:
            raise PayloadValidationError(f"{where}: unknown fields {unknown}")
        missing = sorted(
            f["name"]
            for f in schema.get("fields", ())
            if f["name"] not in payload and "default" not in f
        )
        if missing:
            raise PayloadValidationError(f"{where}: missing fields {missing}")
        try:
            fastavro.validate(payload, schema, raise_errors=True, strict=True)
        except ValidationError as error:
            # ValidationError carries its findings as a JSON list in str(error).
            try:
                detail = "; ".join(json.loads(str(error)))
            except ValueError:
                detail = str(error)
            raise PayloadValidationError(f"{where}: {detail}") from error
