"""`cqrs-warehouse dead-letters`: list, show, replay or discard dead letters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from ..messaging.listening import Outcome
from ..runtime import Runtime


def add_commands(commands: Any) -> None:
    letters = commands.add_parser(
        "dead-letters", help="list, show, replay or discard dead letters"
    ).add_subparsers(dest="letters_command", required=True, metavar="COMMAND")
    listing = letters.add_parser(
        "list", help="list dead letters", description="List dead letters, oldest first."
    )
    listing.add_argument("--listener", metavar="NAME", help="only this listener's")
    listing.set_defaults(run=list_letters)
    show = letters.add_parser("show", help="show one dead letter in full")
    show.add_argument("id", type=int)
    show.set_defaults(run=show_letter)
    replay = letters.add_parser(
        "replay",
        help="apply dead letters to their listener again",
        description="Apply dead letters to their listener again, now, in this process. "
        "A replayed letter that fails again stays, with the error printed. An untrusted "
        "letter (no valid signature) is verified again with this process's MESSAGE_KEY.",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the dead letter to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--listener", metavar="NAME", help="with --all: only this listener's")
    replay.set_defaults(run=replay_letters)
    discard = letters.add_parser(
        "discard",
        help="drop a dead letter for good",
        description="Drop a dead letter; its listener moves past it, so the later "
        "messages of its stream are applied.",
    )
    discard.add_argument("id", type=int)
    discard.set_defaults(run=discard_letter)


def list_letters(args: argparse.Namespace, runtime: Runtime) -> int:
    letters = runtime.dead_letters.list(args.listener)
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'ID':>6}  {'LISTENER':<30} {'TYPE':<45} {'ATTEMPTS':>8}  ERROR")
    for letter in letters:
        kind = f"{letter.type or '?'} v{letter.schema_version or '?'}"
        error = letter.error if len(letter.error) <= 60 else letter.error[:57] + "..."
        print(f"{letter.id:>6}  {letter.listener:<30} {kind:<45} {letter.attempts:>8}  {error}")
    return 0


def show_letter(args: argparse.Namespace, runtime: Runtime) -> int:
    letter = runtime.dead_letters.get(args.id)
    if letter is None:
        return _no_letter(args.id)
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
        "untrusted": letter.untrusted,
        "created_at": letter.created_at.isoformat() if letter.created_at else None,
        "error": letter.error,
        "envelope": letter.envelope_dict,
    }
    print(json.dumps(shown, indent=2))
    return 0


def replay_letters(args: argparse.Namespace, runtime: Runtime) -> int:
    if args.all:
        letters = runtime.dead_letters.list(args.listener)
    else:
        letter = runtime.dead_letters.get(args.id)
        if letter is None:
            return _no_letter(args.id)
        letters = [letter]
    failed = 0
    for letter in tqdm(letters, unit="letter", disable=not sys.stderr.isatty()):
        try:
            spec = runtime.routing.listener(letter.listener)
        except KeyError:
            failed += 1
            print(f"{letter.id}: kept: no listener {letter.listener!r} in listeners.yaml")
            continue
        outcome = runtime.engine.replay(spec, letter)
        if outcome in (Outcome.DEAD_LETTERED, Outcome.DROPPED):
            failed += 1
            kept = runtime.dead_letters.get(letter.id)
            print(f"{letter.id}: failed again, kept: {kept.error if kept else '?'}")
        else:
            print(f"{letter.id}: {outcome}")
    return 1 if failed else 0


def discard_letter(args: argparse.Namespace, runtime: Runtime) -> int:
    if runtime.dead_letters.get(args.id) is None:
        return _no_letter(args.id)
    runtime.dead_letters.discard(args.id)
    print(f"{args.id}: discarded")
    return 0


def _no_letter(letter_id: int) -> int:
    print(f"cqrs-warehouse: no dead letter {letter_id}", file=sys.stderr)
    return 1
