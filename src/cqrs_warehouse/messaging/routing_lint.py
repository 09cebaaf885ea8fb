"""What ``cqrs-warehouse routes`` and the workers' start say about listeners.yaml:
which listener receives a key (``explain``), events and bindings that meet
nothing (``lint``), what cannot work or looks wrong (``check``)."""

from __future__ import annotations

from dataclasses import dataclass

from .routing import RoutingConfig, topic_matches


def explain(routing: RoutingConfig, routing_key: str) -> list[tuple[str, str | None]]:
    """(listener, the first binding that matches ``routing_key`` or None) for every listener."""
    return [(spec.name, spec.matching_binding(routing_key)) for spec in routing.listeners]


def lint(
    routing: RoutingConfig, routing_keys: list[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Routing keys no listener receives, and (listener, binding) pairs matching no key."""
    unreceived = [key for key in routing_keys if not routing.listeners_for(key)]
    unused = [
        (spec.name, binding)
        for spec in routing.listeners
        for binding in spec.bindings
        if not any(topic_matches(binding, key) for key in routing_keys)
    ]
    return unreceived, unused


@dataclass(frozen=True)
class Finding:
    """Something ``check`` found in listeners.yaml: an error stops the workers."""

    error: bool
    where: str  # the entry: "listeners[1] (name)"
    problem: str


def check(routing: RoutingConfig, routing_keys: list[str]) -> list[Finding]:
    """What cannot work, given the routing keys of the known event types (a
    listener whose bindings match none of them receives nothing: an error),
    and what looks wrong (warnings): a binding matching no known type beside
    others that do, a binding given twice, a type the handler says it reads
    that its bindings do not receive, listeners sharing a handler."""
    findings = []
    handlers: dict[str, str] = {}
    for index, spec in enumerate(routing.listeners):
        where = f"listeners[{index}] ({spec.name})"

        def warn(problem: str, where: str = where) -> None:
            findings.append(Finding(False, where, problem))

        matched = [b for b in spec.bindings if any(topic_matches(b, k) for k in routing_keys)]
        if not matched:
            findings.append(
                Finding(
                    True,
                    where,
                    f"its bindings {list(spec.bindings)} match no known event type, "
                    "so it would never receive anything (is a schema folder missing?)",
                )
            )
        else:
            for binding in spec.bindings:
                if binding not in matched:
                    warn(f"binding {binding!r} matches no known event type")
        for binding in sorted({b for b in spec.bindings if spec.bindings.count(b) > 1}):
            warn(f"binding {binding!r} is given more than once")
        for message_type in spec.reads:
            versions = [k for k in routing_keys if k.rpartition(".v")[0] == message_type]
            if versions and not any(spec.accepts(key) for key in versions):
                warn(f"its handler reads {message_type}, which none of its bindings receives")
        if spec.handler_path in handlers:
            warn(
                f"it has the handler of {handlers[spec.handler_path]} ({spec.handler_path}): "
                "both write the same tables"
            )
        handlers.setdefault(spec.handler_path, spec.name)
    return findings
