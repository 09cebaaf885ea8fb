"""What the current line of work is about, for logs: the correlation id that
follows a request through the outbox to every listener, the message and
listener being handled and, with traces on, the trace and span ids. Set by
the web middleware and the listener runner; read by ``ContextFilter``
(installed by ``logs.configure``) and by the outbox, which stamps the
correlation id on every message it stores.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from typing import Any

from opentelemetry import trace

from .tracing import wanted

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
message_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)
message_type: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "message_type", default=None
)
listener: contextvars.ContextVar[str | None] = contextvars.ContextVar("listener", default=None)

_FIELDS = {
    "correlation_id": correlation_id,
    "message_id": message_id,
    "message_type": message_type,
    "listener": listener,
}


def new_correlation_id() -> str:
    return uuid.uuid4().hex


class bound:  # lower case: it reads as a function, ``with bound(...)``
    """Set context fields for the duration of a block.

    A class rather than a contextlib generator: listeners enter one per
    message, and a generator-based context manager cost several times more.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(self, **values: str | None) -> None:
        self._values = values
        self._tokens: list[tuple[contextvars.ContextVar[str | None], Any]] = []

    def __enter__(self) -> None:
        self._tokens = [(_FIELDS[name], _FIELDS[name].set(v)) for name, v in self._values.items()]

    def __exit__(self, *exc_info: object) -> None:
        for variable, token in reversed(self._tokens):
            variable.reset(token)


def of_message(message: Any) -> bound:
    """The context of applying ``message`` (a ``Message``): its id and type, and
    the correlation id it carries, if any (else the current one stays)."""
    if message.correlation_id is None:
        return bound(message_id=message.id, message_type=message.type)
    return bound(
        correlation_id=message.correlation_id, message_id=message.id, message_type=message.type
    )


class ContextFilter(logging.Filter):
    """Adds the context fields to every log record (None when unset), and the
    ids of the current trace and span (``trace_id``, ``span_id``, as
    exporters show them) when traces are on (``tracing.wanted``)."""

    def __init__(self, name: str = "", *, traces: bool | None = None) -> None:
        super().__init__(name)
        self.traces = wanted() if traces is None else traces

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _FIELDS.items():
            if not hasattr(record, name):
                setattr(record, name, variable.get())
        record.trace_id = record.span_id = None
        if self.traces:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = trace.format_trace_id(span.trace_id)
                record.span_id = trace.format_span_id(span.span_id)
        return True
