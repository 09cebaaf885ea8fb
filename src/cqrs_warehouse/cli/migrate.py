"""`cqrs-warehouse migrate`: apply every slice's pending migrations."""

from __future__ import annotations

import argparse
from typing import Any

from .. import migrations
from ..runtime import Runtime
from ..settings import redact_url


def add_commands(commands: Any) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="apply pending database migrations (safe to run again)",
        description="Apply every slice's pending migrations, in order, on DATABASE_URL.",
    )
    migrate.add_argument("--status", action="store_true", help="list migrations, apply nothing")
    migrate.set_defaults(run=run)


def run(args: argparse.Namespace, runtime: Runtime) -> int:
    if args.status:
        for store, name, done in migrations.status(runtime.database, runtime.slices):
            print(f"{'applied' if done else 'pending'}  {store}/{name}")
        return 0
    for name in migrations.migrate(runtime.database, runtime.slices):
        print(f"applied  {name}")
    print(f"database {redact_url(runtime.settings.database_url)} is up to date")
    return 0
