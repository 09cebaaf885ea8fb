"""Helpers for the tests of any slice built on the messaging core. For tests only.

- ``feed(engine, listener, message)``: apply a message to one listener (or a
  bare handler) through the real Avro round trip and the listener engine,
  with no broker;
- ``round_trip(message, registry)``: a message as a listener receives it;
- ``eventually(assertion)``: retry an assertion until it passes or a
  deadline expires.

A command's messages are read back with ``Outbox.pending()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .envelope import envelope_of, message_from_envelope
from .handler import FunctionHandler, Handler
from .listening import Engine, Outcome
from .message import Message
from .routing import ListenerSpec
from .schemas import SchemaRegistry

T = TypeVar("T")


def round_trip(
    message: Message, registry: SchemaRegistry, reads: Mapping[str, int] | None = None
) -> Message:
    """``message`` as a listener receives it: encoded, enveloped, decoded and
    validated, and resolved into the versions in ``reads``."""
    return message_from_envelope(envelope_of(message, registry), registry, reads)


def as_listener(listener: ListenerSpec | Handler | Callable[[Message], Any]) -> ListenerSpec:
    """A listener bound to ``#`` around a bare handler (a spec is itself)."""
    if isinstance(listener, ListenerSpec):
        return listener
    handler = listener if isinstance(listener, Handler) else FunctionHandler(listener)
    name = handler.name.replace(".", "_").replace(":", "_")[-100:]
    reset = handler.reset if handler.resettable else None
    return ListenerSpec(name=name, handler_path="", handler=handler, bindings=("#",), reset=reset)


def feed(
    engine: Engine,
    listener: ListenerSpec | Handler | Callable[[Message], Any],
    message: Message,
) -> bool:
    """Apply ``message`` to one listener as its actor would, through the engine.

    True if it was applied now; False if it was skipped (a duplicate, not
    bound) or held until its predecessor in its stream is applied. A
    handler's error is raised, as on a first attempt.
    """
    envelope = engine.keys.signed(envelope_of(message, engine.registry))  # as the drain signs
    outcomes = engine.apply(as_listener(listener), [envelope])
    return outcomes[0] is Outcome.APPLIED


def eventually(assertion: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Call ``assertion`` until it stops raising AssertionError; re-raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return assertion()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)
