"""`cqrs-warehouse`: migrate the database, serve everything in one process, operate it.

Each group of commands is a module here with an ``add_commands(subparsers)``;
``main`` builds the runtime once (``runtime.build``) and runs the command in
a database connection.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import logs
from ..messaging.errors import MessagingError, StorageError
from ..runtime import build
from ..settings import Settings
from . import archive, dead_letters, migrate, outbox, routes, serve

logger = logging.getLogger("cqrs_warehouse")

_GROUPS = (migrate, serve, outbox, dead_letters, archive, routes)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cqrs-warehouse",
        description="Migrate the database, serve everything in one process, or operate it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        logs.configure()
        runtime = build(Settings.from_env(), embedded=True)
        if not getattr(args, "connect", True):
            return int(args.run(args, runtime))
        # Operator commands may rightly run long (migrate, rebuild, archive
        # prune): no statement or lock timeout for them; the connect timeout holds.
        with runtime.database.connection_context(), runtime.database.unbounded():
            return int(args.run(args, runtime))
    except StorageError as error:
        print(f"cqrs-warehouse: database error: {error}", file=sys.stderr)
        return 2
    except MessagingError as error:
        print(f"cqrs-warehouse: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
