"""`.venv/bin/python -m bench`: the benchmark suite; options below, method in bench/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from .context import log
from .knobs import DEFAULT, QUICK
from .report import render, text_table
from .results import rows
from .suite import run_suite

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Unwind like Ctrl-C does, so that every process, database and queue of
    # the run is removed on the way out.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run: checks the suite")
    parser.add_argument("--runs", type=int, help="runs of every measurement (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="WORD",
        help="only the scenarios whose name holds one of these words (e.g. latency backlog); "
        "with --profile, only those of its profiles (pipeline, drain, paths)",
    )
    parser.add_argument("--profile", action="store_true", help="profile the service instead")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the report (default bench/RESULTS.md for a full run; "
        "--quick and --only write none unless given)",
    )
    args = parser.parse_args()
    knobs = QUICK if args.quick else DEFAULT
    if args.runs:
        knobs = dataclasses.replace(knobs, runs=args.runs)
    if args.profile:
        from .profiling import profile

        profile(knobs, keep_logs=args.keep_logs, only=set(args.only) if args.only else None)
        return 0
    ctx, environment, results = run_suite(
        knobs, only=set(args.only) if args.only else None, keep_logs=args.keep_logs
    )
    table = rows(results, ctx.routing.listeners, knobs)
    print(text_table(table))
    for error in results.errors:
        print(f"error: {error}", file=sys.stderr)
    output = args.output or (None if args.quick or args.only else RESULTS)
    if output is not None:
        report = render(ctx, environment, results, table, main=output.resolve() == RESULTS)
        output.write_text(report, encoding="utf-8")
        log(f"wrote {output}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
