"""`cqrs-warehouse`: migrate the database, or serve everything in one process."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import peewee

from . import logs
from .messaging.errors import MessagingError
from .settings import Settings, redact_url

logger = logging.getLogger("cqrs_warehouse")


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(days) or days < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of days, 0 or more")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cqrs-warehouse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations (safe to run again)",
        description="Apply every slice's pending migrations, in order, on DATABASE_URL.",
    )
    migrate.add_argument("--status", action="store_true", help="list migrations, apply nothing")
    migrate.set_defaults(run=_migrate)

    serve = commands.add_parser(
        "serve",
        help="run the API, the drain and the listeners in one process",
        description="Run the API, the outbox drain and every listener in one process. "
        "Without BROKER_URL it uses the in-process broker; without DATABASE_URL a SQLite "
        "file in the working directory. Applies pending migrations first.",
    )
    serve.add_argument(
        "--bind",
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8000)",
    )
    serve.add_argument("--threads", type=int, default=8, help="HTTP threads (default 8)")
    serve.add_argument(
        "--worker-threads",
        type=int,
        default=4,
        help="threads running the drain and listeners (default 4)",
    )
    serve.set_defaults(run=_serve)

    outbox = commands.add_parser("outbox", help="inspect the outbox").add_subparsers(
        dest="outbox_command", required=True, metavar="COMMAND"
    )
    outbox.add_parser(
        "status",
        help="rows waiting and the age of the oldest",
        description="Rows waiting "
        "in the outbox and the age of the oldest; a growing age means no drain is running.",
    ).set_defaults(run=_outbox_status)

    letters = commands.add_parser(
        "dead-letters", help="list, show, replay or discard dead letters"
    ).add_subparsers(dest="letters_command", required=True, metavar="COMMAND")
    listing = letters.add_parser(
        "list", help="list dead letters", description="List dead letters, oldest first."
    )
    listing.add_argument("--listener", metavar="NAME", help="only this listener's")
    listing.set_defaults(run=_letters_list)
    show = letters.add_parser("show", help="show one dead letter in full")
    show.add_argument("id", type=int)
    show.set_defaults(run=_letters_show)
    replay = letters.add_parser(
        "replay",
        help="apply dead letters to their listener again",
        description="Apply dead letters to their listener again, now, in this process. "
        "A replayed letter that fails again stays, with the error printed.",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the dead letter to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--listener", metavar="NAME", help="with --all: only this listener's")
    replay.set_defaults(run=_letters_replay)
    discard = letters.add_parser(
        "discard",
        help="drop a dead letter for good",
        description="Drop a dead letter; its listener moves past it, so the later "
        "messages of its stream are applied.",
    )
    discard.add_argument("id", type=int)
    discard.set_defaults(run=_letters_discard)

    rebuild = commands.add_parser(
        "rebuild",
        help="empty a listener's state and replay the archive to it",
        description="Empty LISTENER's state and replay the event archive to it alone, while "
        "live traffic goes on. Needs the archive listener (handler "
        "cqrs_warehouse.messaging.archive:archive_message) and a 'reset' for LISTENER in "
        "listeners.yaml.",
    )
    rebuild.add_argument("listener", metavar="LISTENER")
    rebuild.add_argument(
        "--catch-up-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the archive to receive what LISTENER had (default 60)",
    )
    rebuild.set_defaults(run=_rebuild)

    archive = commands.add_parser("archive", help="manage the event archive").add_subparsers(
        dest="archive_command", required=True, metavar="COMMAND"
    )
    prune = archive.add_parser(
        "prune",
        help="drop archived messages older than an age",
        description="Drop archived messages older than DAYS days. A later rebuild replays "
        "only what is kept.",
    )
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    prune.set_defaults(run=_archive_prune)

    routes = commands.add_parser("routes", help="explain and lint listeners.yaml").add_subparsers(
        dest="routes_command", required=True, metavar="COMMAND"
    )
    explain = routes.add_parser(
        "explain", help="which listeners receive a routing key, and through which binding"
    )
    explain.add_argument(
        "routing_key", metavar="ROUTING_KEY", help="e.g. Warehouse.Events.ProductQuantityShipped.v1"
    )
    explain.set_defaults(run=_routes_explain)
    routes.add_parser(
        "lint",
        help="events no listener receives, bindings no event matches",
        description="Compare listeners.yaml with schemas/: list the events in schemas/ that "
        "no listener receives, and the bindings that match no event. Exits 1 if it finds any.",
    ).set_defaults(run=_routes_lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure()
    try:
        return int(args.run(args, Settings.from_env()))
    except MessagingError as error:
        print(f"cqrs-warehouse: {error}", file=sys.stderr)
        return 2
    except peewee.DatabaseError as error:
        hint = (
            " (has `cqrs-warehouse migrate` run?)"
            if "no such table" in str(error) or ("does not exist" in str(error))
            else ""
        )
        print(f"cqrs-warehouse: database error: {error}{hint}", file=sys.stderr)
        return 2


def _runtime(settings: Settings) -> Any:
    from .bootstrap import bootstrap

    return bootstrap(settings, allow_in_process_broker=True)


def _outbox_status(args: argparse.Namespace, settings: Settings) -> int:
    from .messaging import outbox
    from .messaging.database import open_database

    with open_database(settings.database_url).connection_context():
        count, age = outbox.status()
    print(f"waiting: {count}")
    print(f"oldest:  {'-' if age is None else f'{age:.1f}s'}")
    return 0


def _letters_list(args: argparse.Namespace, settings: Settings) -> int:
    from .messaging import dead_letters
    from .messaging.database import open_database

    with open_database(settings.database_url).connection_context():
        letters = dead_letters.list_letters(args.listener)
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'ID':>6}  {'LISTENER':<30} {'TYPE':<45} {'ATTEMPTS':>8}  ERROR")
    for letter in letters:
        kind = f"{letter.type or '?'} v{letter.schema_version or '?'}"
        error = letter.error if len(letter.error) <= 60 else letter.error[:57] + "..."
        print(f"{letter.id:>6}  {letter.listener:<30} {kind:<45} {letter.attempts:>8}  {error}")
    return 0


def _letters_show(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .messaging import dead_letters
    from .messaging.database import open_database

    with open_database(settings.database_url).connection_context():
        letter = dead_letters.DeadLetter.get_or_none(dead_letters.DeadLetter.id == args.id)
    if letter is None:
        print(f"cqrs-warehouse: no dead letter {args.id}", file=sys.stderr)
        return 1
    shown = {
        "id": letter.id,
        "listener": letter.listener,
        "message_id": letter.message_id,
        "type": letter.type,
        "schema_version": letter.schema_version,
        "stream": letter.stream,
        "position": letter.position,
        "attempts": letter.attempts,
        "poison": bool(letter.poison),
        "created_at": letter.created_at.isoformat() if letter.created_at else None,
        "error": letter.error,
        "envelope": letter.envelope_dict,
    }
    print(json.dumps(shown, indent=2))
    return 0


def _letters_replay(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from .messaging import dead_letters

    runtime = _runtime(settings)
    with runtime.database.connection_context():
        if args.all:
            ids = [letter.id for letter in dead_letters.list_letters(args.listener)]
        else:
            if dead_letters.DeadLetter.get_or_none(dead_letters.DeadLetter.id == args.id) is None:
                print(f"cqrs-warehouse: no dead letter {args.id}", file=sys.stderr)
                return 1
            ids = [args.id]
        failed = 0
        for letter_id in tqdm(ids, unit="letter", disable=not sys.stderr.isatty()):
            try:
                outcome = dead_letters.replay(letter_id, runtime.routing, runtime.registry)
            except Exception as error:
                failed += 1
                print(f"{letter_id}: failed again, kept: {type(error).__name__}: {error}")
            else:
                print(f"{letter_id}: {outcome}")
    return 1 if failed else 0


def _letters_discard(args: argparse.Namespace, settings: Settings) -> int:
    from .messaging import dead_letters
    from .messaging.database import open_database

    with open_database(settings.database_url).connection_context():
        if dead_letters.DeadLetter.get_or_none(dead_letters.DeadLetter.id == args.id) is None:
            print(f"cqrs-warehouse: no dead letter {args.id}", file=sys.stderr)
            return 1
        dead_letters.discard(args.id)
    print(f"{args.id}: discarded")
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from .messaging.archive import archive_message, rebuild

    runtime = _runtime(settings)
    try:
        spec = runtime.routing.listener(args.listener)
    except KeyError:
        print(
            f"cqrs-warehouse: no listener {args.listener!r} in {runtime.routing.source}",
            file=sys.stderr,
        )
        return 2
    archive = next((s for s in runtime.routing.listeners if s.handler is archive_message), None)
    if archive is None:
        print(
            f"cqrs-warehouse: {runtime.routing.source} declares no archive listener "
            "(handler cqrs_warehouse.messaging.archive:archive_message)",
            file=sys.stderr,
        )
        return 2
    bar = tqdm(unit="msg", disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    with runtime.database.connection_context():
        report = rebuild(
            spec,
            archive,
            runtime.registry,
            progress=progress,
            catch_up_timeout=args.catch_up_timeout,
        )
    bar.close()
    print(
        f"rebuilt {spec.name}: {report.replayed} archived messages replayed, "
        f"{report.applied} applied, {report.skipped} skipped, {report.failed} dead-lettered"
    )
    return 1 if report.failed else 0


def _archive_prune(args: argparse.Namespace, settings: Settings) -> int:
    import datetime

    from .messaging.archive import prune
    from .messaging.database import open_database

    with open_database(settings.database_url).connection_context():
        dropped = prune(datetime.timedelta(days=args.older_than))
    print(f"pruned {dropped} archived messages older than {args.older_than:g} days")
    return 0


def _routes_explain(args: argparse.Namespace, settings: Settings) -> int:
    from .messaging.routing import explain, load_routing

    routing = load_routing(settings.listeners_config)
    rows = explain(routing, args.routing_key)
    receivers = [(name, binding) for name, binding in rows if binding is not None]
    for name, binding in rows:
        verdict = f"receives (binding {binding!r})" if binding else "does not receive"
        print(f"{name}: {verdict}")
    if not receivers:
        print(f"no listener receives {args.routing_key}")
    return 0


def _routes_lint(args: argparse.Namespace, settings: Settings) -> int:
    from .messaging.message import routing_key_for
    from .messaging.routing import lint, load_routing
    from .messaging.schemas import SchemaRegistry

    routing = load_routing(settings.listeners_config)
    keys = [routing_key_for(t, v) for t, v in SchemaRegistry(settings.schemas_dir).available()]
    unreceived, unused = lint(routing, keys)
    for key in unreceived:
        print(f"event received by no listener: {key}")
    for name, binding in unused:
        print(f"binding matching no event in {settings.schemas_dir}: {name}: {binding!r}")
    if not unreceived and not unused:
        print(
            f"{len(keys)} events, {len(routing.listeners)} listeners: every event is "
            "received and every binding matches an event"
        )
    return 1 if unreceived or unused else 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from . import migrations
    from .messaging.database import open_database

    db = open_database(settings.database_url)
    try:
        if args.status:
            for slice_name, name, done in migrations.status(db):
                print(f"{'applied' if done else 'pending'}  {slice_name}/{name}")
            return 0
        applied = migrations.migrate(db)
    finally:
        db.close()
    for name in applied:
        print(f"applied  {name}")
    print(f"database {redact_url(settings.database_url)} is up to date")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    from . import migrations
    from .bootstrap import bootstrap
    from .messaging.database import open_database

    # Refuse a bad listeners.yaml or environment before starting anything.
    from .messaging.routing import load_routing
    from .web import app_for

    load_routing(settings.listeners_config)
    db = open_database(settings.database_url)
    migrations.migrate(db)
    db.close()

    state: dict[str, Any] = {}

    def load() -> Any:
        import dramatiq

        runtime = bootstrap(settings, allow_in_process_broker=True)
        worker = dramatiq.Worker(runtime.broker, worker_threads=args.worker_threads)
        worker.start()
        state["worker"] = worker
        if runtime.in_process_publisher is not None:
            with runtime.database.connection_context():
                redelivered = runtime.in_process_publisher.redeliver_pending()
            if redelivered:
                logger.info("handed over %d deliveries left by the last run", redelivered)
        logger.info(
            "serving on http://%s (database %s, broker %s)",
            args.bind,
            redact_url(settings.database_url),
            redact_url(settings.broker_url) if settings.broker_url else "in-process",
        )
        return app_for(runtime)

    def stop_worker(*_: Any) -> None:
        worker = state.pop("worker", None)
        if worker is not None:
            worker.stop()

    class _Serve(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", [args.bind])
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_exit", lambda server, worker: stop_worker())
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return load()

    _Serve().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
