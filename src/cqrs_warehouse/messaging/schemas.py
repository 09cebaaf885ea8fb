"""The Avro schema registry over ``schemas/``: validate and encode on write,
decode and validate on read. Used by the outbox (write) and the listener
engine (read); tests use it through ``messaging.testing``.

A message of type ``A.B.C`` at version ``N`` is described by
``A/B/C_vN.avsc`` in one of the registry's folders: the application's
``schemas/`` (SCHEMAS_DIR) and those slices bring. Payloads are plain Avro
binary: no container header, no registry framing.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError

from .errors import PayloadDecodeError, PayloadValidationError, UnknownSchemaError

_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_SCHEMA_FILE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)_v(?P<version>[1-9][0-9]*)\.avsc$")


class SchemaRegistry:
    """Parsed schemas, loaded on first use and kept for the process's life."""

    def __init__(self, *roots: Path | str) -> None:
        self.roots = tuple(Path(root) for root in roots)
        self._parsed: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def schema_path(self, message_type: str, schema_version: int) -> Path:
        """The file of that type and version: in the first folder that has it
        (in the first folder if none has)."""
        if not _TYPE_NAME.fullmatch(message_type) or schema_version < 1:
            raise UnknownSchemaError(
                f"not a message type and version: {message_type!r} v{schema_version!r}"
            )
        *folders, name = message_type.split(".")
        paths = [root.joinpath(*folders, f"{name}_v{schema_version}.avsc") for root in self.roots]
        return next((path for path in paths if path.exists()), paths[0])

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

    def decode(
        self,
        message_type: str,
        schema_version: int,
        data: bytes,
        *,
        reader_version: int | None = None,
    ) -> dict[str, Any]:
        """Read Avro binary written with version ``schema_version``, refusing anything else.

        With ``reader_version``, the record is resolved into that version by
        Avro's reader/writer schema rules (fields the reader lacks are
        dropped, fields the writer lacked take their defaults).
        """
        writer = self.schema(message_type, schema_version)
        reader = None
        if reader_version is not None and reader_version != schema_version:
            reader = self.schema(message_type, reader_version)
        schema = reader or writer
        buffer = io.BytesIO(data)
        try:
            payload = fastavro.schemaless_reader(buffer, writer, reader)
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
        self._validate(schema, payload, message_type, reader_version or schema_version)
        return payload

    def compatibility_problems(self) -> list[str]:
        """Pairs of versions of one type whose data the other cannot read.

        Every version must read what every other version of its type writes
        (old handlers meet new messages, new handlers meet old ones). Each
        pair is tried on sample records that cover every union branch.
        """
        versions: dict[str, list[int]] = {}
        for message_type, version in self.available():
            versions.setdefault(message_type, []).append(version)
        problems = []
        for message_type, found in sorted(versions.items()):
            for writer_version in found:
                writer = self.schema(message_type, writer_version)
                samples = list(_samples(writer, writer.get("__named_schemas", {})))
                for reader_version in found:
                    if reader_version == writer_version:
                        continue
                    reader = self.schema(message_type, reader_version)
                    for sample in samples:
                        buffer = io.BytesIO()
                        fastavro.schemaless_writer(buffer, writer, sample)
                        buffer.seek(0)
                        try:
                            fastavro.schemaless_reader(buffer, writer, reader)
                        except Exception as error:
                            problems.append(
                                f"{message_type}: v{reader_version} cannot read what "
                                f"v{writer_version} writes: {error}"
                            )
                            break
        return problems

    def available(self) -> list[tuple[str, int]]:
        """Every (type, version) that has a schema file, sorted."""
        found = set()
        for root in self.roots:
            for path in root.rglob("*.avsc"):
                match = _SCHEMA_FILE.fullmatch(path.name)
                if match is None:
                    continue
                folders = path.parent.relative_to(root).parts
                found.add((".".join((*folders, match["name"])), int(match["version"])))
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


def _samples(schema: Any, named: dict[str, Any]) -> Iterator[Any]:
    """Records of ``schema`` that between them take every branch of every union."""
    yield _sample(schema, named, branch=0)
    for branch in range(1, _widest_union(schema, named, set()) + 1):
        yield _sample(schema, named, branch=branch)


def _widest_union(schema: Any, named: dict[str, Any], seen: set[str]) -> int:
    if isinstance(schema, list):
        return max([len(schema) - 1] + [_widest_union(s, named, seen) for s in schema])
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return _widest_union(named[schema], named, seen | {schema})
        return 0
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            return max([0] + [_widest_union(f["type"], named, seen) for f in schema["fields"]])
        if kind == "array":
            return _widest_union(schema["items"], named, seen)
        if kind == "map":
            return _widest_union(schema["values"], named, seen)
        return _widest_union(kind, named, seen) if not isinstance(kind, str) else 0
    return 0


_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": 1,
    "long": 1,
    "float": 1.0,
    "double": 1.0,
    "bytes": b"x",
    "string": "x",
}


def _sample(schema: Any, named: dict[str, Any], *, branch: int) -> Any:
    if isinstance(schema, list):
        return _sample(schema[min(branch, len(schema) - 1)], named, branch=branch)
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            return _PRIMITIVE_SAMPLES[schema]
        return _sample(named[schema], named, branch=branch)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: _sample(f["type"], named, branch=branch) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [_sample(schema["items"], named, branch=branch)]
    if kind == "map":
        return {"k": _sample(schema["values"], named, branch=branch)}
    if kind == "fixed":
        return b"\0" * schema["size"]
    return _sample(kind, named, branch=branch)
