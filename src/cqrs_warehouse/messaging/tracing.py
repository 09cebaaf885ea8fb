"""Traces (OpenTelemetry) of the message path: the outbox write, the publish, each listener's apply.

One ``Tracing`` per runtime, configured only by the standard ``OTEL_*``
variables (``Tracing.from_env``); off, and free, unless
``OTEL_TRACES_EXPORTER`` names an exporter (``console``, ``otlp``). The
HTTP span is Falcon's instrumentation's (``web``). The trace context is
captured when an outbox row is written, inside the command's request, and
kept with the row (``traceparent``, ``tracestate``, W3C), so a drained batch
stays attributed to the requests that wrote it; the drain's publish span of
each row is a child of it and travels in the message (the AMQP headers of
those names); each listener's apply is a span named after the listener in
that trace. A batch apply is one span linked to each message's trace (its
child when they share one); what is applied again from the database (a
dead-letter replay, a rebuild, a backfill) starts a trace of its own linked
to the original. The trace context is not signed (``signing``): it decides
nothing a listener does, only which trace a span joins.
docs/decisions/0021-traces.md says why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import ConfigurationError
from .storage.outbox import OutboxRow

#: The envelope fields (and AMQP headers) of the trace context, and their
#: longest accepted texts (a W3C traceparent is 55 characters; tracestate 512).
TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
LIMITS = {TRACEPARENT: 64, TRACESTATE: 512}
#: The exporters OTEL_TRACES_EXPORTER may name.
EXPORTERS = ("console", "otlp", "none")

TraceContext = tuple[str | None, str | None]
_NONE: TraceContext = (None, None)
_PROPAGATOR = TraceContextTextMapPropagator()  # stateless: the W3C format


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment turns traces on: OTEL_TRACES_EXPORTER names an
    exporter other than ``none`` and OTEL_SDK_DISABLED is not ``true``."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(name != "none" for name in _exporter_names(env))


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    return [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]


class Tracing:
    """The tracer of one runtime (``provider`` None: off, every method a no-op)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("cqrs_warehouse") if provider is not None else None
        # Off, each seam hands back one of these (reusable: a nullcontext keeps no state).
        self._no_context: nullcontext[TraceContext] = nullcontext(_NONE)
        self._nothing: nullcontext[None] = nullcontext()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """Off unless ``wanted``; else a provider whose service name, resource,
        sampler (OTEL_TRACES_SAMPLER, parent-based always-on by default),
        batching (OTEL_BSP_*) and OTLP endpoint the SDK reads from OTEL_*."""
        env = os.environ if environ is None else environ
        if not wanted(env):
            return cls()
        names = _exporter_names(env)
        unknown = [n for n in names if n not in EXPORTERS]
        if unknown:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: unknown exporter "
                f"{unknown[0]!r} (this service offers {', '.join(EXPORTERS)})"
            )
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if "otlp" in names and protocol != "http/protobuf":
            raise ConfigurationError(
                f"OTLP protocol {protocol!r}: this service exports traces over "
                "http/protobuf only (OTEL_EXPORTER_OTLP_PROTOCOL)"
            )
        provider = TracerProvider(resource=Resource.create())
        for name in names:
            if name == "console":  # one JSON object per line on stdout
                exporter: Any = ConsoleSpanExporter(
                    out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
                )
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
            else:
                continue
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is left (the SDK also does at exit)."""
        if self.provider is not None:
            self.provider.shutdown()

    # --- the outbox write (a command's request) ---------------------------

    def writing(self, routing_key: str) -> AbstractContextManager[TraceContext]:
        """The span of an outbox write; gives the context to keep with the row."""
        if self._tracer is None:
            return self._no_context
        return self._writing(routing_key)

    @contextmanager
    def _writing(self, routing_key: str) -> Iterator[TraceContext]:
        assert self._tracer is not None
        with self._tracer.start_as_current_span(
            f"outbox append {routing_key}", attributes={"messaging.destination.name": routing_key}
        ):
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            yield carrier.get(TRACEPARENT), carrier.get(TRACESTATE)

    # --- the drain's publish ----------------------------------------------

    def publishing(self, rows: Sequence[OutboxRow]) -> AbstractContextManager[Sequence[OutboxRow]]:
        """A publish span per row that has a trace context, its child; gives
        the rows with their publish span's context, to send along."""
        if self._tracer is None:
            return nullcontext(rows)
        return self._publishing(rows)

    @contextmanager
    def _publishing(self, rows: Sequence[OutboxRow]) -> Iterator[Sequence[OutboxRow]]:
        assert self._tracer is not None
        spans, sent = [], []
        for row in rows:
            parent = _parent(row.traceparent, row.tracestate)
            if parent is None:
                sent.append(row)
                continue
            key = f"{row.type}.v{row.schema_version}"
            span = self._tracer.start_span(
                f"publish {key}",
                context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": key,
                    "messaging.message.id": row.message_id,
                },
            )
            spans.append(span)
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
            sent.append(row._replace(traceparent=carrier.get(TRACEPARENT)))
        try:
            yield sent
        except BaseException as error:
            for span in spans:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, repr(error)[:200]))
            raise
        finally:
            for span in spans:
                span.end()

    # --- a listener's apply -------------------------------------------------

    def applying(
        self, listener: str, envelopes: Sequence[Any], *, replayed: bool = False
    ) -> AbstractContextManager[Any]:
        """The span of ``listener`` applying ``envelopes``: a child of their
        trace when they share one (unless ``replayed``: taken back from the
        database), linked to each message's trace."""
        if self._tracer is None:
            return self._nothing
        contexts = [
            _parent(e.get(TRACEPARENT), e.get(TRACESTATE)) for e in envelopes if isinstance(e, dict)
        ]
        found = [c for c in contexts if c is not None]
        shared = len(found) == len(envelopes) and len({c.trace_id for c in found}) == 1
        parent = None
        if found and shared and not replayed:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(found[0]))
        links = [Link(c) for c in found] if replayed or len(envelopes) > 1 else []
        attributes: dict[str, Any] = {"messaging.batch.message_count": len(envelopes)}
        if len(envelopes) == 1 and isinstance(envelopes[0], dict):
            attributes["messaging.message.id"] = str(envelopes[0].get("id"))[:100]
        if replayed:
            attributes["cqrs.replayed"] = True
        return self._tracer.start_as_current_span(
            listener, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
        )


def fitted(value: Any, field: str) -> str | None:
    """``value`` if it is a trace context text within its limit, else None
    (it came with a message: anyone may have written it)."""
    return value if isinstance(value, str) and 0 < len(value) <= LIMITS[field] else None


def _parent(traceparent: Any, tracestate: Any) -> SpanContext | None:
    """The span context of a W3C ``traceparent`` (and ``tracestate``); None
    for a missing or malformed one."""
    traceparent = fitted(traceparent, TRACEPARENT)
    if traceparent is None:
        return None
    carrier = {TRACEPARENT: traceparent}
    tracestate = fitted(tracestate, TRACESTATE)
    if tracestate is not None:
        carrier[TRACESTATE] = tracestate
    span_context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None
