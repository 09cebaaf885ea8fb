"""Runs every scenario ``knobs.runs`` times and collects their figures.

Runs are interleaved (run 1 of every scenario, then run 2, ...) rather than
grouped, so that a slow minute of the shared machine lands on the service
and its baselines alike instead of on one of them. The backlog templates
are written once, before the first run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from tests.support.processes import ROOT

from . import infra
from .context import Context, log, suite_run
from .knobs import Knobs
from .results import Environment, Results
from .scenarios import api, backlog, baselines, grown, latency, pipeline, quorum
from .service import build_migrated_template, build_seeded_template

# PostgreSQL settings that move these figures most (every listener transaction commits).
POSTGRES_SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "max_connections")

# The scenarios that start from the seeded template.
SEEDED_SCENARIOS = ("service", "latency", "scaling", "sustained", "quorum")  # (name prefixes)
#: Run only when ``--only`` names it (it starts a RabbitMQ cluster): scenarios/quorum.py.
OPT_IN = "quorum queues on 1 and 3 nodes"

Scenario = Callable[[Context], dict[str, float]]


def scenarios(templates: backlog.Templates) -> list[tuple[str, Scenario]]:
    knobs = templates.ctx.knobs
    tables = grown.GrownTemplates(templates.ctx)
    return [
        ("raw AMQP publishing", baselines.amqp),
        ("bare Falcon + PostgreSQL", baselines.bare_falcon),
        ("bare Dramatiq actor + PostgreSQL", baselines.bare_actor),
        ("bare latency chain", baselines.bare_chain),
        ("service API commands/s", api.run),
        ("service end to end", pipeline.run),
        ("latency at fixed rate", latency.run),
        ("latency at fixed rate, fewer worker threads", latency.run_few_threads),
        ("scaling layouts", pipeline.scaling),
        (
            f"latency after a burst of {knobs.burst:,}",
            lambda ctx: grown.after_burst(ctx, tables),
        ),
        (
            f"latency with {knobs.grown_skus:,} SKUs more",
            lambda ctx: grown.grown_tables(ctx, tables),
        ),
        ("sustained commands/s, bare chain", grown.sustained_chain),
        ("sustained commands/s, service", grown.sustained),
        (
            f"backlog {knobs.backlog_small:,}",
            lambda ctx: backlog.run(ctx, templates, knobs.backlog_small),
        ),
        (
            f"backlog {knobs.backlog_large:,}",
            lambda ctx: backlog.run(ctx, templates, knobs.backlog_large),
        ),
        (OPT_IN, quorum.run),
    ]


def source_fingerprint() -> str:
    """The git commit plus a hash of what the service runs (src, config, gunicorn.conf.py),
    so that a change of src during the run shows."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("config").rglob("*")]):
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    digest.update(ROOT.joinpath("gunicorn.conf.py").read_bytes())
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{commit or 'unknown'} (src+config sha256 {digest.hexdigest()[:12]})"


def run_suite(
    knobs: Knobs, *, only: set[str] | None, keep_logs: bool
) -> tuple[Context, Environment, Results]:
    results = Results()
    suite_started = time.monotonic()
    source = source_fingerprint()
    with suite_run(knobs, keep_logs=keep_logs) as ctx:
        environment = Environment.read(
            infra.server_version(ctx.postgres),
            infra.server_settings(ctx.postgres, POSTGRES_SETTINGS),
            infra.rabbitmq_version(ctx.broker_url),
            source,
        )
        listeners = ", ".join(ctx.routing.listeners)
        log(f"suite {ctx.tag}: {knobs.runs} run(s); listeners {listeners}")
        log(f"service logs in {ctx.log_dir}")
        templates = backlog.Templates(ctx)
        ctx.migrated_template = build_migrated_template(ctx)
        chosen = [
            (n, s) for n, s in scenarios(templates) if (_selected(n, only) if only else n != OPT_IN)
        ]
        if any(name.startswith(SEEDED_SCENARIOS) for name, _ in chosen):
            log(f"seeding {knobs.skus} SKUs through the service ...")
            ctx.seeded_template = build_seeded_template(ctx)
        if any(name.startswith("backlog") for name, _ in chosen):
            log("writing the backlog templates through the commands ...")
            started = time.monotonic()
            templates.build()
            results.stage_seconds["backlog templates"] = time.monotonic() - started
            log(f"  done in {time.monotonic() - started:.0f} s")
        for run in range(1, knobs.runs + 1):
            for name, scenario in chosen:
                _run_one(ctx, results, name, scenario, run)
    end_source = source_fingerprint()
    # Only the hash: the git state may change with files the service does not run.
    if end_source.split("sha256")[-1] != source.split("sha256")[-1]:
        results.errors.append(
            f"the source changed during the run ({source} -> {end_source}): "
            "re-run for clean figures"
        )
    results.notes += ctx.notes
    results.total_seconds = time.monotonic() - suite_started
    return ctx, environment, results


def _selected(name: str, only: set[str]) -> bool:
    return any(word in name for word in only)


def _run_one(ctx: Context, results: Results, name: str, scenario: Scenario, run: int) -> None:
    """One run of ``scenario``; tried once more if it fails (the servers are shared:
    a test elsewhere may restart PostgreSQL or RabbitMQ under it)."""
    for attempt in (1, 2):
        log(f"run {run}/{ctx.knobs.runs}: {name} ..." + (" (again)" if attempt == 2 else ""))
        # The 1-minute load average as each run starts (this suite's own load
        # included): shows how busy the shared machine was along the way.
        results.load_averages.append(os.getloadavg()[0])
        started = time.monotonic()
        try:
            figures = scenario(ctx)
            break
        except Exception as error:
            ctx.stop_all()
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            log(f"  FAILED: {detail[:2000]}")
            traceback.print_exc(file=sys.stderr)
            if attempt == 2:
                results.errors.append(f"run {run}, {name}: {detail[:2000]}")
                return
            results.notes.append(f"run {run}, {name} failed once and was run again: {detail[:300]}")
            infra.wait_for_servers(ctx.postgres, ctx.broker_url)
    elapsed = time.monotonic() - started
    results.stage_seconds[name] = results.stage_seconds.get(name, 0.0) + elapsed
    results.add(figures)
    shown = ", ".join(f"{k}={v:,.1f}" for k, v in figures.items() if "cpu_ms" not in k)
    log(f"  {elapsed:.0f} s: {shown}")
