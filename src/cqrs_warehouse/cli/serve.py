"""`cqrs-warehouse serve`: the API, the drain and every listener in one process."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import dramatiq
from gunicorn.app.base import BaseApplication

from .. import migrations
from ..runtime import Runtime, build
from ..settings import redact_url
from ..web import create_app

logger = logging.getLogger("cqrs_warehouse")


def add_commands(commands: Any) -> None:
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
    serve.set_defaults(run=run, connect=False)


def run(args: argparse.Namespace, runtime: Runtime) -> int:
    # Refuse a bad listeners.yaml, RabbitMQ without MESSAGE_KEY or too many
    # waiting reads before starting anything, and migrate; the process
    # gunicorn forks builds its own runtime.
    runtime.check_routing()
    runtime.require_message_key()
    waiting = runtime.settings.consistency_max_waiting
    if waiting >= args.threads:
        print(
            f"cqrs-warehouse serve: CONSISTENCY_MAX_WAITING={waiting} must be below --threads "
            f"({args.threads}), or waiting reads could take every thread from writes",
            file=sys.stderr,
        )
        return 2
    with runtime.database.connection_context():
        migrations.migrate(runtime.database, runtime.slices)
    settings = runtime.settings
    workers: list[dramatiq.Worker] = []

    def load() -> Any:
        served = build(settings, embedded=True)
        worker = dramatiq.Worker(served.broker, worker_threads=args.worker_threads)
        worker.start()
        workers.append(worker)
        with served.database.connection_context():
            handed_over = served.transport.start()
        if handed_over:
            logger.info("handed over %d deliveries left by the last run", handed_over)
        logger.info(
            "serving on http://%s (database %s, broker %s)",
            args.bind,
            redact_url(settings.database_url),
            redact_url(settings.broker_url) if settings.broker_url else "in-process",
        )
        return create_app(served)

    def stop_worker(*_: Any) -> None:
        while workers:
            workers.pop().stop()

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
