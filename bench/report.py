"""How a suite run's results are shown: the table printed at the end, and
bench/RESULTS.md (the table, the targets, the machine, CPU per delivery, a
scaling estimate and the method)."""

from __future__ import annotations

from pathlib import Path

from .context import Context
from .figures import fmt, method
from .knobs import Knobs
from .results import Environment, Results, Row

PROFILES = Path(__file__).resolve().parent / "profiles"
CPU_PARTS = ("api", "workers", "postgres", "rabbitmq", "loadgen", "machine")


def text_table(table: list[Row]) -> str:
    """The table printed at the end of a run, in aligned columns."""
    header = ("figure", "median", "unit", "runs", "ratio", "target", "verdict")
    lines = [header, *(_cells(row, markdown=False) for row in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    rendered.insert(1, "-" * len(rendered[0]))
    return "\n".join(rendered)


def markdown_table(table: list[Row]) -> str:
    """The same rows in RESULTS.md, with the baseline's median too."""
    lines = [
        "| figure | median | unit | runs | baseline (median) | ratio | target | verdict |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | --- |",
    ]
    lines += ["| " + " | ".join(_cells(row, markdown=True)) + " |" for row in table]
    return "\n".join(lines)


def _cells(row: Row, *, markdown: bool) -> tuple[str, ...]:
    digits = row.figure.digits
    label, runs = row.figure.label, [fmt(v, digits) for v in row.runs]
    if markdown:
        label = ("&nbsp;&nbsp;" if label.startswith("  ") else "") + label.strip()
        baseline = [fmt(row.baseline, digits) if row.baseline is not None else ""]
    return (
        label,
        fmt(row.median, digits),
        row.figure.unit,
        (", " if markdown else " ").join(runs),
        *(baseline if markdown else []),
        f"{row.ratio:.2f}x" if row.ratio is not None else "",
        row.figure.target or "",
        _row_verdict(row),
    )


def knobs_table(knobs: Knobs) -> str:
    lines = ["| knob | value |", "| --- | --- |"]
    lines += [f"| `{name}` | {value} |" for name, value in vars(knobs).items()]
    return "\n".join(lines)


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
        + _targets(results, listeners, knobs)
        + _backlog_note(results, knobs, listeners)
        + _backlog_ceiling(results, env.cores),
        _cpu(results),
        _scaling(results, listeners),
        _notes() if main else _ELSEWHERE,
        method(knobs, len(listeners)),
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
    loads = sorted(results.load_averages)
    if not loads:
        return ""
    return (
        f"; 1-minute load average as each run started (this suite included): min "
        f"{loads[0]:.1f}, median {loads[len(loads) // 2]:.1f}, max {loads[-1]:.1f}"
    )


def _verdict(ok: bool | None, met: str = "**met**", not_met: str = "**not met**") -> str:
    return "not measured" if ok is None else (met if ok else not_met)


def _row_verdict(row: Row) -> str:
    return "" if row.figure.target is None else _verdict(row.met, "met", "NOT MET")


def _targets(results: Results, listeners: tuple[str, ...], knobs: Knobs) -> str:
    large, small, few_threads = (
        knobs.backlog_large,
        knobs.backlog_small,
        knobs.latency_worker_threads,
    )
    m = results.median
    lines = ["| target | measured | verdict |", "| --- | --- | --- |"]
    for key, base, minimum, target in (
        ("api.cps", "bare_falcon.cps", 0.6, "commands/s >= 0.6x bare Falcon+PG POST"),
        ("e2e.dps", "bare_actor.dps", 0.5, "deliveries/s >= 0.5x bare Dramatiq+PG actor"),
    ):
        value, baseline = m(key), m(base)
        r = value / baseline if value is not None and baseline else None
        lines.append(
            f"| {target} | {fmt(value)} vs {fmt(baseline)} = {fmt(r, 2)}x | "
            f"{_verdict(None if r is None else r >= minimum)} |"
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


def _backlog_note(results: Results, knobs: Knobs, listeners: tuple[str, ...]) -> str:
    bare = results.median("bare_actor.dps")
    if not bare:
        return ""
    fan_out, large, target_s = len(listeners), knobs.backlog_large, knobs.backlog_target_s
    needed = large * fan_out / target_s
    return (
        f"\n\nThe backlog target means {large * fan_out:,} deliveries ({fan_out} listeners) in "
        f"{target_s:g} s, {needed:,.0f} deliveries/s: {needed / bare:.1f}x what the bare "
        f"Dramatiq actor ({bare:,.0f}/s) reaches here with one transaction per message. The "
        "service's listeners apply what RabbitMQ has already delivered in one transaction "
        "(up to LISTENER_BATCH_SIZE), so a backlog is applied in batches."
    )


def _backlog_ceiling(results: Results, cores: int) -> str:
    """The most deliveries/s the machine's cores allow at the backlog's CPU per delivery."""
    m = results.median
    parts = [m(f"backlog.large.cpu_ms.{part}") for part in ("workers", "postgres", "rabbitmq")]
    machine, bare = m("backlog.large.cpu_ms.machine"), m("bare_actor.dps")
    if not bare or not machine or any(v is None for v in parts):
        return ""
    workers, postgres, rabbitmq = (v or 0.0 for v in parts)
    ceiling = cores * 1000.0 / machine  # CPU-ms per second over CPU-ms per delivery
    return (
        f"\n\nDuring the backlog a delivery cost {fmt(machine, 3)} CPU-ms of the whole machine "
        f"(workers {fmt(workers, 3)}, PostgreSQL {fmt(postgres, 3)}, RabbitMQ "
        f"{fmt(rabbitmq, 3)}; from 10 % to 90 % of it applied). At that cost {cores} cores "
        f"allow at most {ceiling:,.0f} deliveries/s, {ceiling / bare:.2f}x the bare actor."
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
        f"## Suite runtime\n\n{results.total_seconds / 60:.1f} minutes in all; "
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
