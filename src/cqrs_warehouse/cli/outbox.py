"""`cqrs-warehouse outbox status`: what waits to be published."""

from __future__ import annotations

import argparse
from typing import Any

from ..runtime import Runtime


def add_commands(commands: Any) -> None:
    outbox = commands.add_parser("outbox", help="inspect the outbox").add_subparsers(
        dest="outbox_command", required=True, metavar="COMMAND"
    )
    outbox.add_parser(
        "status",
        help="rows waiting and the age of the oldest",
        description="Rows waiting "
        "in the outbox and the age of the oldest; a growing age means no drain is running.",
    ).set_defaults(run=status)


def status(args: argparse.Namespace, runtime: Runtime) -> int:
    count, age = runtime.outbox.status()
    print(f"waiting: {count}")
    print(f"oldest:  {'-' if age is None else f'{age:.1f}s'}")
    return 0
