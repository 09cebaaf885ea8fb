"""`cqrs-warehouse rebuild`, `backfill` and `archive prune`: the archive and its uses."""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from ..messaging.archive import Archive, prune
from ..messaging.listening.rebuild import RebuildReport, backfill, rebuild
from ..runtime import Runtime


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(days) or days < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of days, 0 or more")
    return days


def add_commands(commands: Any) -> None:
    rebuilding = commands.add_parser(
        "rebuild",
        help="empty a listener's state and replay the archive to it",
        description="Empty LISTENER's state and replay the event archive to it alone, while "
        "live traffic goes on. Needs the archive listener (handler "
        "cqrs_warehouse.messaging.archive:Archive) and a listener whose handler can reset.",
    )
    rebuilding.add_argument("listener", metavar="LISTENER")
    rebuilding.add_argument(
        "--catch-up-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the archive to receive what LISTENER had (default 60)",
    )
    rebuilding.set_defaults(run=run_rebuild)
    backfilling = commands.add_parser(
        "backfill",
        help="apply the archive's history to a listener added later",
        description="Apply to LISTENER every archived event its bindings match, in each "
        "stream's order, without emptying it, then let it go on with the live flow: for a "
        "listener added after events were written. Binds its queue first (`routes apply`). "
        "Refuses, changing nothing, when the archive was pruned of what LISTENER reads.",
    )
    backfilling.add_argument("listener", metavar="LISTENER")
    backfilling.add_argument(
        "--catch-up-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the archive to receive what was written (default 60)",
    )
    backfilling.set_defaults(run=run_backfill)
    archive = commands.add_parser("archive", help="manage the event archive").add_subparsers(
        dest="archive_command", required=True, metavar="COMMAND"
    )
    pruning = archive.add_parser(
        "prune",
        help="drop archived messages older than an age",
        description="Drop archived messages older than DAYS days. A later rebuild replays "
        "only what is kept.",
    )
    pruning.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    pruning.set_defaults(run=run_prune)


def run_rebuild(args: argparse.Namespace, runtime: Runtime) -> int:
    return _replaying(args, runtime, "rebuilt", rebuild)


def run_backfill(args: argparse.Namespace, runtime: Runtime) -> int:
    if runtime.routes is not None:
        runtime.routes.apply()  # its queue receives the live flow before the replay begins
    return _replaying(args, runtime, "backfilled", backfill)


def _replaying(
    args: argparse.Namespace, runtime: Runtime, done: str, replay: Callable[..., RebuildReport]
) -> int:
    routing = runtime.routing
    try:
        spec = routing.listener(args.listener)
    except KeyError:
        print(f"cqrs-warehouse: no listener {args.listener!r} in {routing.source}", file=sys.stderr)
        return 2
    archives = routing.listeners_of(Archive)
    if not archives:
        print(
            f"cqrs-warehouse: {routing.source} declares no archive listener "
            "(handler cqrs_warehouse.messaging.archive:Archive)",
            file=sys.stderr,
        )
        return 2
    bar = tqdm(unit="msg", disable=not sys.stderr.isatty())

    def progress(count: int, total: int) -> None:
        bar.total = total
        bar.n = count
        bar.refresh()

    report = replay(
        runtime.engine,
        spec,
        archives[0],
        progress=progress,
        catch_up_timeout=args.catch_up_timeout,
    )
    bar.close()
    print(
        f"{done} {spec.name}: {report.replayed} archived messages replayed, "
        f"{report.applied} applied, {report.skipped} skipped, {report.failed} dead-lettered"
    )
    return 1 if report.failed else 0


def run_prune(args: argparse.Namespace, runtime: Runtime) -> int:
    dropped = prune(datetime.timedelta(days=args.older_than))
    print(f"pruned {dropped} archived messages older than {args.older_than:g} days")
    return 0
