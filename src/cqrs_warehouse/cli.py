"""`cqrs-warehouse`: migrate the database, or serve everything in one process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .messaging.errors import MessagingError
from .settings import Settings, redact_url

logger = logging.getLogger("cqrs_warehouse")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cqrs-warehouse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the database schema (safe to run again)"
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

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.run(args, Settings.from_env()))
    except MessagingError as error:
        print(f"cqrs-warehouse: {error}", file=sys.stderr)
        return 2


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
    from .web import build_app

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
        return build_app()

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
