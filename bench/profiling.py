"""``python -m bench --profile``: where the service spends its time, by py-spy and pyinstrument.

Four profiles, each written as a text summary to bench/profiles/
(``--only pipeline drain backlog paths`` picks some of them):

- ``pipeline.txt``: the API (gunicorn master and workers) and the workers
  (dramatiq processes) while the sustained end-to-end load runs, sampled
  side by side;
- ``backlog.txt``: the workers in their default layout (drain and
  listeners) applying a backlog written by the commands, with the rows
  published and deliveries applied per second while sampled;
- ``drain.txt``: the drain alone (``--queues <prefix>outbox_drain``, one
  process, one thread) publishing a backlog written by the commands, with
  its rate, so the cost per published message can be read without the
  listeners in the way;
- ``paths.txt``: pyinstrument's call trees of one command's path through
  the Falcon app and one delivery's path through a listener, run one after
  another in a single process with nothing else running
  (``bench/paths_profile.py``).

py-spy samples the processes from outside (``--nonblocking``: it does not
stop them) twice at once: every thread it does not see as idle (wall time,
including waits inside C calls such as psycopg2's round trips to
PostgreSQL), and only the thread holding the GIL (``--gil``: Python CPU,
what bounds a process's throughput). It writes collapsed stacks; the
summary gives each thread role's share, the functions
that were on top of the stack (self) and the ones anywhere in it
(inclusive), and the share of each library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import BIN
from tests.support.waiting import eventually

from .context import Context, log, suite_run
from .knobs import Knobs
from .paths_profile import profile_paths
from .results import cpu_model
from .scenarios.pipeline import DRAIN_QUEUE, closed_loop
from .service import build_migrated_template, build_seeded_template, installed
from .suite import source_fingerprint

PROFILES = Path(__file__).resolve().parent / "profiles"
RATE = 100  # samples per second per thread

VIEWS = {
    False: "threads not idle (wall time, incl. waits in C calls: DB and AMQP round trips)",
    True: "thread holding the GIL (Python CPU)",
}

# Thread roles, by a function that appears in their stacks (first match wins).
ROLES = (
    ("drain", ("Drain.run_batch", "Drain.run", "drain_outbox")),
    ("listener", ("declare_listener_actor", "Engine.apply")),
    ("drain waker", ("DrainWaker._run",)),
    ("dramatiq consumer", ("_ConsumerThread", "ConsumerThread")),
    ("dramatiq worker loop (middleware, acks)", ("WorkerThread",)),
    ("dramatiq log forwarding (parent process)", ("watch_logs",)),
    ("http request", ("App.__call__", "ThreadWorker.handle")),
    ("gunicorn loop", ("ThreadWorker.run", "Arbiter.run")),
)

# Libraries, by the start of the file path py-spy shows.
LIBRARIES = (
    ("peewee / playhouse", ("peewee.py", "playhouse/")),
    ("psycopg2", ("psycopg2/",)),
    ("pika", ("pika/",)),
    ("dramatiq", ("dramatiq/",)),
    ("logging", ("logging/", "pythonjsonlogger/")),
    ("json", ("json/",)),
    ("fastavro", ("fastavro/",)),
    ("falcon", ("falcon/",)),
    ("gunicorn", ("gunicorn/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("jsonschema / referencing", ("jsonschema/", "referencing/", "rpds")),
    ("cqrs_warehouse", ("cqrs_warehouse/",)),
)


@dataclass
class Profile:
    """Collapsed stacks of one py-spy recording."""

    stacks: Counter[tuple[str, ...]] = field(default_factory=Counter)

    @classmethod
    def read(cls, path: Path) -> Profile:
        profile = cls()
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = tuple(f for f in stack.split(";") if not f.startswith(("process ", "thread ")))
            profile.stacks[frames] += int(count)
        return profile

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def roles(self) -> Counter[str]:
        shares: Counter[str] = Counter()
        for frames, count in self.stacks.items():
            shares[_role(frames)] += count
        return shares

    def self_functions(self) -> Counter[str]:
        shares: Counter[str] = Counter()
        for frames, count in self.stacks.items():
            if frames:
                shares[_name(frames[-1])] += count
        return shares

    def inclusive_functions(self) -> Counter[str]:
        shares: Counter[str] = Counter()
        for frames, count in self.stacks.items():
            for name in {_name(frame) for frame in frames}:
                shares[name] += count
        return shares

    def libraries(self) -> Counter[str]:
        """Samples by the library of the innermost frame that is not the stdlib's
        threading/socket plumbing: where the time goes, by owner."""
        shares: Counter[str] = Counter()
        for frames, count in self.stacks.items():
            shares[_library(frames)] += count
        return shares


def _name(frame: str) -> str:
    """``function (path)`` as ``path:function``."""
    function, _, rest = frame.partition(" (")
    return f"{rest.rstrip(')')}:{function}" if rest else function


def _role(frames: tuple[str, ...]) -> str:
    joined = ";".join(frames)
    for role, markers in ROLES:
        if any(marker in joined for marker in markers):
            return role
    return "other"


def _library(frames: tuple[str, ...]) -> str:
    for frame in reversed(frames):
        path = frame.partition(" (")[2]
        for library, prefixes in LIBRARIES:
            if path.startswith(prefixes):
                return library
    return "stdlib / other"


def summary(title: str, profile: Profile, notes: list[str], top: int = 25) -> str:
    total = max(1, profile.total)

    def block(heading: str, counts: Counter[str], limit: int) -> list[str]:
        lines = [heading]
        for name, count in counts.most_common(limit):
            lines.append(f"  {100 * count / total:5.1f}%  {name}")
        return [*lines, ""]

    lines = [title, "=" * len(title), *notes, f"samples (running threads only): {total}", ""]
    lines += block("by thread role", profile.roles(), 10)
    lines += block("by library (innermost non-stdlib frame)", profile.libraries(), 15)
    lines += block(f"top {top} self (on top of the stack)", profile.self_functions(), top)
    lines += block(
        f"top {top} inclusive (anywhere in the stack)", profile.inclusive_functions(), top
    )
    return "\n".join(lines)


def record(pid: int, seconds: float, output: Path, *, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its children. ``gil``: only the thread holding the GIL
    (Python CPU); else every thread py-spy does not see as idle (which includes
    threads blocked in C calls such as psycopg2 waiting for PostgreSQL)."""
    return subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            *(["--gil"] if gil else []),
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "--nolineno",
            "--rate",
            str(RATE),
            "--duration",
            str(int(seconds)),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(recorder: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        _, err = recorder.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        recorder.kill()
        raise RuntimeError("py-spy did not finish") from None
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")


def profile_pipeline(ctx: Context, raw_dir: Path) -> str:
    knobs = ctx.knobs
    seconds = knobs.profile_seconds
    with installed(ctx, "profile_e2e") as service:
        port = service.start_api()
        workers = service.start_workers()
        service.probe()
        warmup = 3.0
        load = closed_loop(ctx, port, warmup=warmup, window=seconds + 2)
        time.sleep(warmup)
        assert service.api is not None
        recorders = {
            (name, gil): record(pid, seconds, raw_dir / f"{name}_{gil}.raw", gil=gil)
            for name, pid in (("api", service.api.pid), ("workers", workers.pid))
            for gil in (False, True)
        }
        for recorder in recorders.values():
            _finish(recorder, seconds)
        result = load.result()
    notes = [
        f"load: closed loop, {knobs.e2e_connections} clients, {result['rate']:.0f} commands/s "
        f"accepted while sampled; {len(ctx.routing.listeners)} listeners",
        f"layout: gunicorn {knobs.web_concurrency}x{knobs.gunicorn_threads} threads, dramatiq "
        f"-p {knobs.worker_processes} -t {knobs.worker_threads}; py-spy {RATE} Hz, {seconds:.0f} s",
        "",
    ]
    parts = []
    for name, gil in recorders:
        what = "gunicorn (API)" if name == "api" else "dramatiq workers (drain + listeners)"
        title = f"{what}: {VIEWS[gil]}"
        parts.append(summary(title, Profile.read(raw_dir / f"{name}_{gil}.raw"), notes))
    return "\n\n".join(parts)


def profile_drain(ctx: Context, raw_dir: Path) -> str:
    """The drain alone: its cost per published row without the listeners in the way."""
    return _profile_backlog(
        ctx,
        raw_dir,
        "drain",
        events=20_000,
        layout={"processes": 1, "threads": 1, "queues": [DRAIN_QUEUE]},
        what=f"the drain alone: dramatiq --queues {DRAIN_QUEUE} -p 1 -t 1",
        title="drain_outbox alone, on a backlog",
    )


def profile_backlog(ctx: Context, raw_dir: Path) -> str:
    """The default layout applying a backlog: where a delivery's worker CPU goes
    when the listeners apply batches (the backlog scenario's CPU per delivery)."""
    knobs = ctx.knobs
    return _profile_backlog(
        ctx,
        raw_dir,
        "backlog",
        events=60_000,
        layout={},
        what=f"the default layout: dramatiq -p {knobs.worker_processes} -t {knobs.worker_threads}",
        title="dramatiq workers (drain + listeners) applying a backlog",
    )


def _profile_backlog(
    ctx: Context,
    raw_dir: Path,
    name: str,
    *,
    events: int,
    layout: dict[str, Any],
    what: str,
    title: str,
) -> str:
    """py-spy on workers of ``layout`` (``start_workers``' options) while they apply
    a backlog of ``events`` events written by the commands."""
    seconds = ctx.knobs.profile_seconds
    with installed(ctx, f"profile_{name}", template=ctx.migrated_template) as service:
        fill = [sys.executable, "-m", "bench.fill_outbox", "0", str(events), "1000"]
        writers = [
            ctx.start(
                f"profile_{name}_fill{part}", [*fill, str(part), "2"], service.installation.env
            )
            for part in range(2)
        ]
        for writer in writers:
            if writer.wait(timeout=600) != 0:
                raise RuntimeError(f"filling the backlog failed:\n{writer.output()[-3000:]}")
            writer.terminate()
        workers = service.start_workers(**layout)

        def drain_started() -> None:
            assert service.outbox_rows() < events, "the drain has not started"

        eventually(drain_started, timeout=60, interval=0.1)
        rows_before, started = service.outbox_rows(), time.monotonic()
        applied_before = sum(service.applied().values())
        recorders = {
            gil: record(workers.pid, seconds, raw_dir / f"{name}_{gil}.raw", gil=gil)
            for gil in (False, True)
        }
        for recorder in recorders.values():
            _finish(recorder, seconds)
        elapsed = time.monotonic() - started
        rate = (rows_before - service.outbox_rows()) / elapsed
        applied = (sum(service.applied().values()) - applied_before) / elapsed
    notes = [
        f"{what}, a backlog of {events:,} events written by the commands; {rate:.0f} rows "
        f"published/s and {applied:.0f} deliveries applied/s while sampled",
        f"py-spy {RATE} Hz, {seconds:.0f} s (or until the outbox emptied)",
        "",
    ]
    return "\n\n".join(
        summary(f"{title}: {VIEWS[gil]}", Profile.read(path), notes)
        for gil, path in ((g, raw_dir / f"{name}_{g}.raw") for g in recorders)
    )


def profile(knobs: Knobs, *, keep_logs: bool, only: set[str] | None = None) -> None:
    if shutil.which(str(BIN / "py-spy")) is None:
        raise SystemExit("bench --profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    header = (
        f"source: {source_fingerprint()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{cpu_model()}, {os.cpu_count()} cores"
    )
    chosen = [
        name for name in ("pipeline", "drain", "backlog", "paths") if not only or name in only
    ]
    written: dict[str, str] = {}
    with suite_run(knobs, keep_logs=keep_logs) as ctx:
        raw_dir = Path(tempfile.mkdtemp(prefix=f"{ctx.tag}_profiles_"))
        try:
            ctx.migrated_template = build_migrated_template(ctx)
            if "pipeline" in chosen:
                ctx.seeded_template = build_seeded_template(ctx)
                log("profiling the API and the workers under the end-to-end load ...")
                written["pipeline"] = profile_pipeline(ctx, raw_dir)
            if "drain" in chosen:
                log("profiling the drain alone on a backlog ...")
                written["drain"] = profile_drain(ctx, raw_dir)
            if "backlog" in chosen:
                log("profiling the workers applying a backlog ...")
                written["backlog"] = profile_backlog(ctx, raw_dir)
            if "paths" in chosen:
                log("profiling a command's and a delivery's paths in one process ...")
                written["paths"] = profile_paths(ctx)
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)
    PROFILES.mkdir(exist_ok=True)
    for name, text in written.items():
        (PROFILES / f"{name}.txt").write_text(f"{header}\n\n{text}\n", encoding="utf-8")
        print(text, end="\n\n")
    log(f"wrote {', '.join(str(PROFILES / f'{name}.txt') for name in written)}")
