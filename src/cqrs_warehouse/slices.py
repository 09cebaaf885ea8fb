"""Slices: the building blocks of an installation, each a folder that declares itself once.

A slice's package holds a ``SLICE = Slice(...)`` that says everything the
core needs: its tables (``Store``: a PostgreSQL schema, migrations,
models), its own settings, its Avro schemas, how to build its services,
its HTTP routes, how its errors map to HTTP and its OpenAPI fragment.
Its listener handlers are ``Handler`` classes inside its package, which the
runtime builds with its services when listeners.yaml names them.

The installation's slices are the SLICES setting (default: the warehouse);
the messaging core is always there, first (``CORE``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import peewee

from .messaging.archive import ArchivedMessage
from .messaging.dead_letters import DeadLetter
from .messaging.errors import ConfigurationError
from .messaging.inprocess import Delivery
from .messaging.outbox import Outbox
from .messaging.rabbitmq.routes import DeclaredBinding, DeclaredQueue
from .messaging.schemas import SchemaRegistry
from .messaging.storage import Database
from .messaging.storage.models import (
    HeldMessage,
    IdempotencyKey,
    OutboxRecord,
    ProcessedMessage,
    StreamHead,
    StreamPosition,
)


@dataclass(frozen=True)
class Store:
    """The tables of one part of a slice, in a PostgreSQL schema of their own."""

    #: Names the migration history (``<name>_schema_migrations``) and ``migrate --status`` lines.
    name: str
    #: The PostgreSQL schema (SQLite has one namespace: table names carry the slice).
    schema: str
    #: The folder of its migrations (peewee's ``playhouse.migrations``).
    migrations: Path
    models: tuple[type[peewee.Model], ...] = ()


@dataclass(frozen=True)
class SliceContext:
    """What the runtime hands a slice to build its services with."""

    #: The slice's own settings (its ``settings`` class read from the environment), or None.
    settings: Any
    database: Database
    outbox: Outbox
    registry: SchemaRegistry


#: An HTTP route: its URI template and the Falcon resource that answers it.
Route = tuple[str, object]


def _itself(context: SliceContext) -> Any:
    return context


def _no_routes(services: Any, runtime: Any) -> Iterable[Route]:
    return ()


@dataclass(frozen=True)
class Slice:
    name: str
    stores: tuple[Store, ...] = ()
    #: A settings dataclass whose fields name their variables (``settings.variable``).
    settings: type | None = None
    #: A folder of Avro schemas (``<Type path>_v<N>.avsc``) beside SCHEMAS_DIR's.
    schemas: Path | None = None
    #: Builds the slice's services (its commands, say); its handlers and routes get them.
    build: Callable[[SliceContext], Any] = _itself
    #: The slice's HTTP routes, given its services and the runtime.
    routes: Callable[[Any, Any], Iterable[Route]] = _no_routes
    #: HTTP status of each of its error classes (the answer's title is the
    #: error's ``title`` attribute, its description the error's text).
    errors: Mapping[type[Exception], int] = field(default_factory=dict)
    #: Its part of the OpenAPI document: {"paths": {...}, "components": {...}}.
    openapi: Mapping[str, Any] = field(default_factory=dict)
    #: The package the slice is: where its handler classes live. Set by ``load_slices``.
    package: str = ""


_MESSAGING = Path(__file__).parent / "messaging"

#: The messaging core, as a slice: its tables; handler classes of the core
#: (the archive) and outside any slice are built with its context.
CORE = Slice(
    name="messaging",
    package="cqrs_warehouse.messaging",
    stores=(
        Store(
            "messaging",
            "messaging",
            _MESSAGING / "migrations",
            (
                OutboxRecord,
                StreamHead,
                ProcessedMessage,
                StreamPosition,
                HeldMessage,
                DeadLetter,
                ArchivedMessage,
                Delivery,
                IdempotencyKey,
                DeclaredQueue,
                DeclaredBinding,
            ),
        ),
    ),
)


def load_slices(paths: Sequence[str]) -> tuple[Slice, ...]:
    """The core, then the slice each module path declares (its ``SLICE``)."""
    slices = [CORE]
    for path in paths:
        try:
            module = importlib.import_module(path)
        except Exception as error:
            raise ConfigurationError(f"SLICES: {path!r} cannot be imported: {error!r}") from error
        declared = getattr(module, "SLICE", None)
        if not isinstance(declared, Slice):
            raise ConfigurationError(f"SLICES: {path!r} declares no SLICE = Slice(...)")
        slices.append(replace(declared, package=path))
    names = [slice_.name for slice_ in slices]
    stores = [store.name for slice_ in slices for store in slice_.stores]
    for what, seen in (("slice", names), ("store", stores)):
        twice = sorted({name for name in seen if seen.count(name) > 1})
        if twice:
            raise ConfigurationError(f"SLICES: more than one {what} is named {twice[0]!r}")
    return tuple(slices)


def owner(slices: Iterable[Slice], module: str) -> Slice | None:
    """The slice whose package holds ``module``."""
    for slice_ in slices:
        if module == slice_.package or module.startswith(slice_.package + "."):
            return slice_
    return None
