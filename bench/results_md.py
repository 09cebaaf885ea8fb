"""bench/RESULTS.md: the table, the targets, the method, and a scaling estimate."""

from __future__ import annotations

from pathlib import Path

from .context import Context
from .figures import fmt
from .report import Environment, Results, Row, knobs_table, markdown_table

PROFILES = Path(__file__).resolve().parent / "profiles"
CPU_PARTS = ("api", "workers", "postgres", "rabbitmq", "loadgen", "machine")


def render(
    ctx: Context, env: Environment, results: Results, table: list[Row], *, main: bool = True
) -> str:
    """The report. ``main``: it is bench/RESULTS.md, which carries bench/NOTES.md
    and the profiles' summaries; any other report points to them instead
    (they are written about RESULTS.md's run)."""
    knobs = ctx.knobs
    listeners = ctx.routing.listeners
    sections = [
        "# cqrs-warehouse benchmark results",
        f"Written by `.venv/bin/python -m bench` on {env.date}, source {env.source}. "
        f"Every figure is the median of {knobs.runs} independent runs (all runs listed); "
        "a ratio is the service figure's median over its baseline's median, both measured in "
        f"this same suite run. The service ran with `{ctx.routing.path.name}`'s "
        f"{len(listeners)} listeners ({', '.join(listeners)}): each command is "
        f"{len(listeners)} deliveries.",
        _warnings(env, results),
        _machine(env, results),
        "## Results\n\n" + markdown_table(table),
        "## Targets\n\n"
        + _targets(
            results,
            listeners,
            knobs.backlog_large,
            knobs.backlog_small,
            knobs.latency_worker_threads,
        )
        + _backlog_note(results, len(listeners), knobs.backlog_large, knobs.backlog_target_s),
        _cpu(results),
        _scaling(results, listeners),
        _notes() if main else _ELSEWHERE,
        _method(ctx),
        _runtime(results),
        _profiles() if main else "",
        "## Knobs (bench/knobs.py)\n\n" + knobs_table(knobs),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _warnings(env: Environment, results: Results) -> str:
    lines = []
    # Only the load before the suite started says anything about other work:
    # once it runs, the suite's own processes (API, workers, PostgreSQL's
    # backends, the load generator) keep the 1-minute load average at 4-9 on
    # a 2-core machine, so the load along the way is reported, not warned of.
    if float(env.load_before.split()[0]) > 1.0:
        lines.append(
            f"- The machine was busy before the suite started (load average "
            f"{env.load_before}): other work, or a run that had just ended. Absolute figures "
            "may be pessimistic; runs are interleaved so that the ratios are less affected."
        )
    lines += [f"- Error: {error}" for error in results.errors]
    lines += [f"- Note: {note}" for note in results.notes]
    return "**Warnings**\n\n" + "\n".join(lines) if lines else ""


def _machine(env: Environment, results: Results) -> str:
    versions = " · ".join(f"{name} {version}" for name, version in env.versions.items())
    settings = ", ".join(f"{k}={v}" for k, v in sorted(env.postgres_settings.items()))
    return (
        "## Machine\n\n"
        f"- CPU: {env.cpu_model}, {env.cores} cores; RAM {env.ram_gib:.1f} GiB; "
        f"load average at start {env.load_before}" + _load_along(results) + "\n"
        f"- Versions: {versions}\n"
        f"- PostgreSQL settings: {settings}\n"
        "- PostgreSQL, RabbitMQ, the service, its baselines and the load generator all share "
        "the machine."
    )


def _load_along(results: Results) -> str:
    loads = sorted(getattr(results, "load_averages", []))
    if not loads:
        return ""
    return (
        f"; 1-minute load average as each run started (this suite included): min "
        f"{loads[0]:.1f}, median {loads[len(loads) // 2]:.1f}, max {loads[-1]:.1f}"
    )


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def _targets(
    results: Results, listeners: tuple[str, ...], large: int, small: int, few_threads: int
) -> str:
    m = results.median
    lines = ["| target | measured | verdict |", "| --- | --- | --- |"]

    def ratio(key: str, base: str) -> float | None:
        value, baseline = m(key), m(base)
        return value / baseline if value is not None and baseline else None

    r = ratio("api.cps", "bare_falcon.cps")
    ok = None if r is None else r >= 0.6
    lines.append(
        f"| commands/s >= 0.6x bare Falcon+PG POST | {fmt(m('api.cps'))} vs "
        f"{fmt(m('bare_falcon.cps'))} = {fmt(r, 2)}x | {_verdict(ok)} |"
    )
    r = ratio("e2e.dps", "bare_actor.dps")
    ok = None if r is None else r >= 0.5
    lines.append(
        f"| deliveries/s >= 0.5x bare Dramatiq+PG actor | {fmt(m('e2e.dps'))} vs "
        f"{fmt(m('bare_actor.dps'))} = {fmt(r, 2)}x | {_verdict(ok)} |"
    )
    for stat, limit in (("p50", 3.0), ("p99", 10.0)):
        values = {name: m(f"latency.{name}.{stat}_ms") for name in listeners}
        known = [v for v in values.values() if v is not None]
        shown = ", ".join(f"{name} {fmt(v, 1)}" for name, v in values.items())
        floor = m(f"bare_chain.{stat}_ms")
        if floor and known:
            shown += f" ms; the bare chain's {fmt(floor, 1)} ms, {max(known) / floor:.1f}x"
        else:
            shown += " ms"
        ok = None if not known else max(known) <= limit
        lines.append(f"| latency {stat} <= {limit:g} ms at 100 cmd/s | {shown} | {_verdict(ok)} |")
    for stat, limit in (("p50", 3.0), ("p99", 10.0)):
        worst = m(f"latency_t.worst.{stat}_ms")
        if worst is not None:
            lines.append(
                f"| the same {stat}, workers with fewer threads (`-t "
                f"{few_threads}`) | slowest listener {fmt(worst, 1)} ms | "
                f"{_verdict(worst <= limit)} |"
            )
    seconds, completed = m("backlog.large.seconds"), m("backlog.large.completed")
    state = (
        "" if completed is None or completed >= 1 else " (projected: not applied by the deadline)"
    )
    lines.append(
        f"| {large:,} backlog applied in <= 60 s | {fmt(seconds, 1)} s{state} | "
        f"{_verdict(None if seconds is None else seconds <= 60 and completed == 1)} |"
    )
    peak = m("backlog.large.peak_rss_mb")
    lines.append(
        f"| worker RSS <= 100 MB | peak {fmt(peak, 1)} MB per worker process | "
        f"{_verdict(None if peak is None else peak <= 100)} |"
    )
    small_peak, growth = m("backlog.small.peak_rss_mb"), m("backlog.large.rss_growth_mb")
    flat = None
    if peak is not None and small_peak is not None and growth is not None:
        # Flat: the large backlog's peak within 10 % (at least 5 MB) of the small
        # one's, and no more than that gained from early in the run to its end.
        allowance = max(5.0, 0.1 * small_peak)
        flat = peak - small_peak <= allowance and growth <= allowance
    lines.append(
        f"| RSS not growing with the backlog | peak {fmt(small_peak, 1)} MB at {small:,} vs "
        f"{fmt(peak, 1)} MB at {large:,}; {fmt(growth, 1)} MB gained during the {large:,} run "
        f"| {_verdict(flat)} |"
    )
    return "\n".join(lines)


def _backlog_note(results: Results, fan_out: int, large: int, target_s: float) -> str:
    bare = results.median("bare_actor.dps")
    if not bare:
        return ""
    needed = large * fan_out / target_s
    return (
        f"\n\nThe backlog target means {large * fan_out:,} deliveries ({fan_out} listeners) in "
        f"{target_s:g} s, {needed:,.0f} deliveries/s: {needed / bare:.1f}x what the bare "
        f"Dramatiq actor ({bare:,.0f}/s) reaches here with one transaction per message. The "
        "service's listeners apply what RabbitMQ has already delivered in one transaction "
        "(up to LISTENER_BATCH_SIZE), so a backlog is applied in batches."
    )


def _cpu(results: Results) -> str:
    m = results.median
    values = {part: m(f"e2e.cpu_ms.{part}") for part in CPU_PARTS}
    if all(v is None for v in values.values()):
        return ""
    service = sum(values[p] or 0.0 for p in ("api", "workers", "postgres", "rabbitmq"))
    lines = [
        "## CPU per delivery (end to end, 2 worker processes)",
        "",
        "CPU time used by each part over the measuring window, divided by the deliveries applied "
        "in it (a command counts once per listener, so its API cost is spread over them). "
        "PostgreSQL is the backends connected to the run's database; RabbitMQ is its whole VM "
        "(other users of the broker count too); machine is every process on it.",
        "",
        "| part | CPU ms per delivery |",
        "| --- | ---: |",
    ]
    lines += [f"| {part} | {fmt(value, 2)} |" for part, value in values.items()]
    lines.append(f"| api + workers + postgres + rabbitmq | {fmt(service, 2)} |")
    bare = {part: m(f"bare_actor.cpu_ms.{part}") for part in ("workers", "postgres", "rabbitmq")}
    if all(v is not None for v in bare.values()):
        lines += [
            "",
            "The bare Dramatiq actor, for comparison (its workers, its database's backends, "
            "RabbitMQ; between 10 % and 90 % of its messages applied): "
            + ", ".join(f"{part} {fmt(v, 2)}" for part, v in bare.items())
            + f" ms per delivery, {fmt(sum(v or 0.0 for v in bare.values()), 2)} in all.",
        ]
    return "\n".join(lines)


def _scaling(results: Results, listeners: tuple[str, ...]) -> str:
    m = results.median
    p1, p2 = m("scale.p1.dps"), m("e2e.dps")
    d1, d2 = m("scale.drain1.dps"), m("scale.drain2.dps")
    bare, single = m("bare_actor.dps"), m("amqp.per_message")
    batched = m("amqp.batched")
    fan_out = len(listeners)
    lines = [
        "## Scaling out",
        "",
        "Measured on this machine (deliveries/s end to end, same load as the sustained figure):",
        "",
        f"- 1 worker process (drain + listeners, 8 threads): {fmt(p1)}",
        f"- 2 worker processes (the default): {fmt(p2)}"
        + (f" ({p2 / p1:.2f}x the single process)" if p1 and p2 else ""),
        f"- drain in its own process (`--queues <prefix>outbox_drain -p 1 -t 1`) + listeners in "
        f"one process: {fmt(d1)}",
        f"- two drain processes + listeners in one process: {fmt(d2)}"
        + (f" ({d2 / d1:.2f}x one drain)" if d1 and d2 else ""),
        "",
        "Every worker process started by `dramatiq cqrs_warehouse.worker` consumes the drain "
        "queue too, unless `--queues` leaves it out; several drains claim different rows "
        "(`FOR UPDATE SKIP LOCKED`). On PostgreSQL the drain runs in each such process's "
        "NOTIFY thread, one pass per burst of notifications.",
        "",
    ]
    service_ms = sum(
        m(f"e2e.cpu_ms.{part}") or 0.0 for part in ("api", "workers", "postgres", "rabbitmq")
    )
    if service_ms and p2:
        ideal = {cores: cores * 1000 / service_ms for cores in (2, 4, 8, 16)}
        lines += [
            "**Estimate beyond 2 cores** (reasoned from the figures above, not measured):",
            "",
            f"- CPU bound: a delivery costs about {service_ms:.2f} CPU-ms across API, workers, "
            f"PostgreSQL and RabbitMQ, so the work itself would allow about "
            + ", ".join(f"{v:,.0f}/s on {c} cores" for c, v in ideal.items())
            + " if it spread perfectly. Listener work is per message and independent across "
            "SKUs, so worker processes scale out (one per core, as dramatiq's default does); "
            "the Python processes are GIL-bound, so threads beyond what hides the DB round "
            "trips add nothing.",
        ]
        tx = m("amqp.tx_batched")
        if single and batched:
            lines.append(
                f"- The drain: one drain thread is bounded by its broker round trips: raw, "
                f"{single:,.0f} messages/s with a confirm per message, {fmt(batched)} with "
                f"confirms per batch (what the drain does) and {fmt(tx)} with a transaction "
                f"per batch (measured above), i.e. at most {batched * fan_out:,.0f} "
                f"deliveries/s with {fan_out} listeners per drain thread whatever the core count "
                "(less the outbox's own SELECT/DELETE and the per-message logging); several "
                "drains claim different rows (SKIP LOCKED), so drains add up until RabbitMQ's "
                "or PostgreSQL's own CPU is the bound."
            )
        if bare:
            lines.append(
                f"- The baseline actor reaches {bare:,.0f} deliveries/s on these 2 cores; a "
                "delivery of the service costs more CPU than that actor's update+commit (the "
                "CPU table above), so per core the service stays below that actor, whatever the "
                "number of cores."
            )
        lines.append(
            "- Beyond one machine: PostgreSQL commits (one fsync per listener transaction, i.e. "
            "per batch, with synchronous_commit=on; group commit helps under concurrency) and "
            "the per-SKU row "
            "locks of messaging_stream_positions serialise each stream, so many SKUs scale and "
            "a single hot SKU does not. Each RabbitMQ queue is served by one Erlang process: a "
            "listener's queue is a ceiling of its own (typically tens of thousands of "
            "messages/s for small persistent messages by RabbitMQ's own published figures; an "
            "assumption, not measured here), far above these figures."
        )
    return "\n".join(lines)


def _method(ctx: Context) -> str:
    k = ctx.knobs
    return f"""## How each figure is measured

- **Processes**: the API is `gunicorn -c gunicorn.conf.py` with
  WEB_CONCURRENCY={k.web_concurrency} and GUNICORN_THREADS={k.gunicorn_threads}; the workers are
  `dramatiq cqrs_warehouse.worker -p {k.worker_processes} -t {k.worker_threads}` (dramatiq's
  defaults on 2 cores); LOG_FORMAT=json to a file; each run has a fresh database (a copy of
  a migrated template) and its own QUEUE_PREFIX, removed afterwards. Baselines use the same
  gunicorn.conf.py and process layout.
- **Load generator** (bench/loadgen.py): its own process, HTTP/1.1 keep-alive over raw asyncio
  streams (a client library would take far more CPU from the server on 2 cores; its own CPU
  share is recorded as `client_cpu`). Commands: half increases, half shipments of 1-3 units
  over {k.skus} SKUs seeded with a large stock (no shipment fails, the low-quantity notifier
  never fires).
- **Commands/s**: the API alone (workers stopped, so the outbox just fills), {k.http_connections}
  closed-loop clients, {k.http_warmup:g} s warm-up, {k.http_window:g} s window, only 200 answers
  counted. Bare Falcon: the same routes, one peewee insert+commit per POST, no validation,
  logging, metrics or outbox.
- **Sustained deliveries/s**: API + workers together, {k.e2e_connections} closed-loop clients
  (as many as for the API alone, so that the machine, not the clients, is the bound: the lag
  shows whether the listeners keep up), {k.e2e_warmup:g} s warm-up, then the
  growth over {k.e2e_window:g} s of the sum over listeners and SKUs of
  messaging_stream_positions.position (each unit is one delivery applied). The lag is the
  events committed (sum of warehouse_product_stock.version) minus the slowest listener's sum at
  the window's end. Bare Dramatiq actor: {k.bare_actor_messages:,} messages enqueued before
  its workers start, rate between 10 % and 90 % applied.
- **Latency**: measured twice, with the default worker layout and with `-t
  {k.latency_worker_threads}` (fewer threads per worker process; the table shows the slowest
  listener for it). After a CHECKPOINT (earlier scenarios' writes flushed),
  {k.latency_rate:g} commands/s for {k.latency_warmup:g} s of warm-up, not measured, then
  {k.latency_duration:g} s measured, open loop (a slow answer does not delay the next send),
  over {k.latency_skus} SKUs in turn, so each SKU's
  positions are known. A trigger added only in the benchmark database on
  messaging_stream_positions runs `pg_notify` when a listener's position advances; a thread
  of the suite LISTENs on its own connection and timestamps each notification as it arrives
  (it is delivered when the listener's transaction commits). Latency = first notification of
  that listener and SKU at or past the command's position, minus the time the load generator
  read the 200 answer; both clocks are CLOCK_MONOTONIC. Resolution: probe notifications sent
  from another connection before each run arrive within the "method's own delay" shown in the
  table (median, an upper bound), well below the targets. Two hops on the way are timed the
  same way: RabbitMQ's delivery of the event to a probe queue of the suite's (not durable,
  bound with `#`; its consumer timestamps each delivery), and the drain's commit (a trigger on
  the outbox's DELETE). The floor, measured the same way
  with the same load: the bare chain (bench/baselines/bare_chain.py), the bare Falcon app's
  insert+commit whose trigger NOTIFYs a relay process, which publishes a persistent message
  in confirm mode to a fanout exchange with one durable queue per listener, and
  {len(ctx.routing.listeners)} bare pika consumers, one thread each, doing one upsert+commit
  per message before the ack. The latency rows' ratio is the service's over the floor's
  slowest listener. "Cores busy" is the machine's CPU time (user, system, interrupts; not
  time stolen by a hypervisor) over the load's wall time and the number of cores, for the
  service's load and the floor's: a fixed rate's latency stays near its floor only while
  the machine has cores to spare.
- **Backlog**: the events are written by the service's own commands, in-process
  (bench/fill_outbox.py: `cqrs_warehouse.bootstrap` + the command functions, 500 to a
  transaction, {k.backlog_fill_parts} processes side by side) into a template database once per
  suite run; each run copies it (CREATE DATABASE ... TEMPLATE). Consecutive events belong to
  different SKUs ({k.skus}). Timed from starting the workers to every listener having applied
  every event; a run stops at {k.backlog_deadline_large_s:g} s ({k.backlog_deadline_small_s:g} s
  for the small one) and then reports the time projected from the slowest listener's rate over
  the run's second half. RSS is sampled every 0.2 s for each dramatiq process holding an AMQP
  connection (the worker processes, not their parent nor the Prometheus fork); the drain rate
  is the outbox's row count going down.
- **Raw AMQP**: a durable topic exchange bound to {len(ctx.routing.listeners)} durable queues
  (the listeners' fan-out; the server's default queue version, as the service declares them),
  persistent messages with the drain's properties;
  {k.amqp_single_messages:,} messages with pika's BlockingChannel in confirm mode (a round
  trip each), then {k.amqp_batched_messages:,} published {k.amqp_batch} at a time with one wait
  for their confirms per batch (pika's SelectConnection), then the same in one AMQP
  transaction per batch (`tx_select`/`tx_commit`).
- **Runs**: the scenarios are interleaved (run 1 of each, then run 2 ...), so that a busy
  moment of the shared machine is spread over the service and its baselines."""


_ELSEWHERE = """## What was done, and what stands in the way

Written by hand in `bench/NOTES.md`, about the run of `bench/RESULTS.md`
(spliced into it there), with the profiles in `bench/profiles/`. This report
is another run of the same suite."""


def _notes() -> str:
    """bench/NOTES.md, written by hand: what was done, and what stands in the way."""
    path = Path(__file__).resolve().parent / "NOTES.md"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


def _runtime(results: Results) -> str:
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results.stage_seconds.items())
    return (
        f"## Suite runtime\n\n{getattr(results, 'total_seconds', 0.0) / 60:.1f} minutes in all; "
        f"per scenario, all runs: {stages}."
    )


def _profiles() -> str:
    files = sorted(PROFILES.glob("*.txt")) if PROFILES.is_dir() else []
    if not files:
        return ""
    lines = [
        "## Profiles",
        "",
        "From `.venv/bin/python -m bench --profile` (run separately; the header of each file gives "
        "its source and date). The first lines of each summary:",
    ]
    for path in files:
        head = path.read_text(encoding="utf-8").splitlines()[:40]
        lines += ["", f"`bench/profiles/{path.name}`:", "", "```", *head, "```"]
    return "\n".join(lines)
