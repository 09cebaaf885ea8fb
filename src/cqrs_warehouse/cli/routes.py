"""`cqrs-warehouse routes`: explain and lint listeners.yaml."""

from __future__ import annotations

import argparse
from typing import Any

from ..messaging.message import routing_key_for
from ..messaging.routing import explain, lint
from ..runtime import Runtime


def add_commands(commands: Any) -> None:
    routes = commands.add_parser("routes", help="explain and lint listeners.yaml").add_subparsers(
        dest="routes_command", required=True, metavar="COMMAND"
    )
    explaining = routes.add_parser(
        "explain", help="which listeners receive a routing key, and through which binding"
    )
    explaining.add_argument(
        "routing_key", metavar="ROUTING_KEY", help="e.g. Warehouse.Events.ProductQuantityShipped.v1"
    )
    explaining.set_defaults(run=run_explain, connect=False)
    routes.add_parser(
        "lint",
        help="events no listener receives, bindings no event matches",
        description="Compare listeners.yaml with the Avro schemas: list the events that no "
        "listener receives, and the bindings that match no event. Exits 1 if it finds any.",
    ).set_defaults(run=run_lint, connect=False)


def run_explain(args: argparse.Namespace, runtime: Runtime) -> int:
    rows = explain(runtime.routing, args.routing_key)
    for name, binding in rows:
        verdict = f"receives (binding {binding!r})" if binding else "does not receive"
        print(f"{name}: {verdict}")
    if not any(binding for _, binding in rows):
        print(f"no listener receives {args.routing_key}")
    return 0


def run_lint(args: argparse.Namespace, runtime: Runtime) -> int:
    routing = runtime.routing
    keys = [routing_key_for(t, v) for t, v in runtime.registry.available()]
    unreceived, unused = lint(routing, keys)
    for key in unreceived:
        print(f"event received by no listener: {key}")
    folders = ", ".join(str(root) for root in runtime.registry.roots)
    for name, binding in unused:
        print(f"binding matching no event in {folders}: {name}: {binding!r}")
    if not unreceived and not unused:
        print(
            f"{len(keys)} events, {len(routing.listeners)} listeners: every event is "
            "received and every binding matches an event"
        )
    return 1 if unreceived or unused else 0
