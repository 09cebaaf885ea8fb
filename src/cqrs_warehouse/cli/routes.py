"""`cqrs-warehouse routes`: explain, lint, and make the broker follow listeners.yaml."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..messaging.message import routing_key_for
from ..messaging.rabbitmq.routes import PruneRefused, QueueState, Routes
from ..messaging.routing_lint import check, explain, lint
from ..runtime import Runtime


def add_commands(commands: Any) -> None:
    routes = commands.add_parser(
        "routes", help="explain, lint and apply listeners.yaml on the broker"
    ).add_subparsers(dest="routes_command", required=True, metavar="COMMAND")
    explaining = routes.add_parser(
        "explain", help="which listeners receive a routing key, and through which binding"
    )
    explaining.add_argument(
        "routing_key", metavar="ROUTING_KEY", help="e.g. Warehouse.Events.ProductQuantityShipped.v1"
    )
    explaining.set_defaults(run=run_explain, connect=False)
    routes.add_parser(
        "lint",
        help="events no listener receives, bindings no event matches, leftover queues",
        description="Compare listeners.yaml with the Avro schemas: list the events that no "
        "listener receives, the bindings that match no event, what stops the workers "
        "(error) or looks wrong (warning), and, with BROKER_URL set, the leftover queues "
        "of this installation. Exits 1 if it finds any.",
    ).set_defaults(run=run_lint, connect=False)
    routes.add_parser(
        "status",
        help="each listener's queue, depth, consumers and bindings; leftover queues",
        description="For each listener of listeners.yaml: its queue, the messages waiting "
        "in it, its consumers, its bindings in the file and as declared on the broker; then "
        "the leftover queues of this installation (QUEUE_PREFIX) that no listener owns.",
    ).set_defaults(run=run_status)
    routes.add_parser(
        "apply",
        help="make the broker's bindings those of listeners.yaml (the workers do it at start)",
        description="Declare every listener queue and its bindings, and unbind what this "
        "installation declared that listeners.yaml no longer says; a removed listener's "
        "queue keeps its messages. The workers do the same when they start.",
    ).set_defaults(run=run_apply)
    pruning = routes.add_parser(
        "prune",
        help="delete a leftover queue, by name",
        description="Delete QUEUE, a leftover queue of this installation that no listener "
        "of listeners.yaml owns (see `routes status`), with its delay and dead-letter "
        "queues. Refuses one that holds messages unless --force.",
    )
    pruning.add_argument("queue", metavar="QUEUE")
    pruning.add_argument("--force", action="store_true", help="delete its messages too")
    pruning.set_defaults(run=run_prune)


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
    # (A binding matching nothing beside others is listed just above.)
    findings = [f for f in check(routing, keys) if f.error or "matches no known" not in f.problem]
    for finding in findings:
        level = "error (the workers refuse to start)" if finding.error else "warning"
        print(f"{level}: {routing.source}: {finding.where}: {finding.problem}")
    leftovers = []
    if runtime.routes is not None:
        with runtime.database.connection_context():
            leftovers = runtime.routes.status()[1]
        for queue in leftovers:
            print(
                f"warning: leftover queue {queue.queue} (was listener {queue.listener}): "
                f"{_messages(queue)}; no listener of {routing.source} owns it "
                "(`cqrs-warehouse routes prune QUEUE` deletes it)"
            )
    if not (unreceived or unused or findings or leftovers):
        print(
            f"{len(keys)} events, {len(routing.listeners)} listeners: every event is "
            "received and every binding matches an event"
        )
    return 1 if unreceived or unused or findings or leftovers else 0


def _routes(runtime: Runtime) -> Routes | None:
    if runtime.routes is None:
        print(
            "cqrs-warehouse: BROKER_URL is not set: on the in-process broker there are no "
            "queues or bindings to show or change",
            file=sys.stderr,
        )
    return runtime.routes


def run_status(args: argparse.Namespace, runtime: Runtime) -> int:
    routes = _routes(runtime)
    if routes is None:
        return 2
    listed, leftovers = routes.status()
    for queue in listed:
        print(f"{queue.listener}: queue {queue.queue}, {_messages(queue)}")
        print(f"  bindings in the file:   {_patterns(queue.in_file)}")
        declared = _patterns(queue.declared)
        if queue.declared != queue.in_file:
            declared += "  (differs: the workers apply the file at start, or `routes apply`)"
        print(f"  bindings on the broker: {declared}")
    print(f"leftover queues of QUEUE_PREFIX={routes.prefix!r} that no listener owns:")
    for queue in leftovers:
        print(f"  {queue.queue} (was listener {queue.listener}): {_messages(queue)}")
    if not leftovers:
        print("  none")
    return 0


def run_apply(args: argparse.Namespace, runtime: Runtime) -> int:
    routes = _routes(runtime)
    if routes is None:
        return 2
    changes = routes.apply()
    for queue, exchange, binding in changes.bound:
        print(f"bound {queue} to {exchange}: {binding!r}")
    for queue, exchange, binding in changes.unbound:
        print(f"unbound {queue} from {exchange}: {binding!r}")
    for queue in changes.leftovers:
        print(f"leftover queue {queue}: no listener owns it, nothing binds it")
    if not (changes.bound or changes.unbound):
        print("the broker already follows the file")
    return 0


def run_prune(args: argparse.Namespace, runtime: Runtime) -> int:
    routes = _routes(runtime)
    if routes is None:
        return 2
    try:
        deleted = routes.prune(args.queue, force=args.force)
    except PruneRefused as refusal:
        print(f"cqrs-warehouse: {refusal}", file=sys.stderr)
        return 2
    print(f"deleted {args.queue} and {deleted} messages with it")
    return 0


def _messages(queue: QueueState) -> str:
    if queue.messages is None:
        return "not on the broker"
    return f"{queue.messages} messages, {queue.consumers} consumers"


def _patterns(patterns: tuple[str, ...]) -> str:
    return ", ".join(repr(p) for p in patterns) or "none"
