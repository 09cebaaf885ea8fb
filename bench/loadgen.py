"""The HTTP load generator: ``LoadRun(spec)`` runs ``python -m bench.loadgen '<json spec>'``,
which prints its result as JSON, and reads it back.

A separate process, so that its CPU is not the orchestrator's. It speaks
HTTP/1.1 with keep-alive over asyncio streams directly: a full client library
would spend several times the CPU per request and, on 2 cores, take it from
the server under test. It only ever connects to 127.0.0.1, and every mode is
bounded in time (and ``seed`` in count).

Modes (``spec["mode"]``):

- ``closed``: ``connections`` clients each send the next command as soon as
  the previous one is answered, for ``warmup`` + ``window`` seconds; counts
  answers completed inside the window.
- ``paced``: sends ``rate`` commands per second on a fixed schedule (open
  loop: a slow answer does not delay the next send) for ``duration``
  seconds; records, for each command answered 200, its SKU, the position
  (the SKU's version) it produced and the CLOCK_MONOTONIC time its answer was
  read. Each SKU is used by one command at a time and starts at
  ``start_position``, so the position is known without asking the service.
- ``seed``: one increase of ``seed_quantity`` per SKU.

Commands are the service's POST /warehouse/products/{sku}/increase_quantity
and /ship_quantity with {"quantity": n}; the bare Falcon baseline serves the
same routes.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
SEED_QUANTITY = 1_000_000_000  # far more than the load ever ships


def sku_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}"


@dataclass
class Answer:
    status: int
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> Answer:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            assert self.reader is not None
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            try:
                self.writer.write(request)
                return await self._read_answer()
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed an idle keep-alive connection: one retry
                # on a new one (commands are only sent once it is open).
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_answer(self) -> Answer:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, closing = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                closing = True
        body = await self.reader.readexactly(length) if length else b""
        if closing:
            self.close()
        return Answer(status, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def command(sku: str, action: str, quantity: int) -> tuple[str, bytes]:
    path = f"/warehouse/products/{sku}/{action}"
    return path, json.dumps({"quantity": quantity}).encode()


def random_command(rng: random.Random, prefix: str, skus: int) -> tuple[str, bytes]:
    """Half increases, half shipments, of 1 to 3 units of a random SKU."""
    action = "increase_quantity" if rng.random() < 0.5 else "ship_quantity"
    return command(sku_name(prefix, rng.randrange(skus)), action, rng.randint(1, 3))


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    port, prefix, skus = spec["port"], spec["sku_prefix"], spec["skus"]
    started = time.monotonic()
    window_start = started + spec["warmup"]
    window_end = window_start + spec["window"]
    statuses: Counter[int] = Counter()
    latencies: list[float] = []

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = Connection(port)
        try:
            while (now := time.monotonic()) < window_end:
                path, body = random_command(rng, prefix, skus)
                answer = await connection.post(path, body)
                done = time.monotonic()
                if window_start <= now and done <= window_end:
                    statuses[answer.status] += 1
                    latencies.append(done - now)
        finally:
            connection.close()

    cpu_before = time.process_time()
    await asyncio.gather(*(client(seed) for seed in range(spec["connections"])))
    latencies.sort()
    ok = statuses.get(200, 0)
    return {
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "rate": ok / spec["window"],
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        # The client's own share of a core while it ran: shows it left the
        # server the rest of the machine.
        "client_cpu": (time.process_time() - cpu_before) / (time.monotonic() - started),
    }


async def paced(spec: dict[str, Any]) -> dict[str, Any]:
    port, prefix, skus = spec["port"], spec["sku_prefix"], spec["skus"]
    rate, duration = spec["rate"], spec["duration"]
    # The first ``warmup`` seconds of commands are sent alike, and not recorded.
    unrecorded = int(rate * spec.get("warmup", 0.0))
    total = unrecorded + int(rate * duration)
    positions = [spec["start_position"]] * skus
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(spec["connections"]):
        idle.put_nowait(Connection(port))
    records: list[tuple[str, int, float, float]] = []
    failures: Counter[str] = Counter()
    late = 0
    answered_200 = 0

    async def send(index: int, connection: Connection) -> None:
        sku_index = index % skus
        action = "increase_quantity" if (index // skus) % 2 == 0 else "ship_quantity"
        sku = sku_name(prefix, sku_index)
        path, body = command(sku, action, 1)
        sent = time.monotonic()
        try:
            answer = await connection.post(path, body)
        except (OSError, asyncio.IncompleteReadError) as error:
            failures[type(error).__name__] += 1
            connection.close()
        else:
            answered = time.monotonic()
            if answer.status == 200:
                nonlocal answered_200
                answered_200 += 1
                positions[sku_index] += 1
                if index >= unrecorded:
                    records.append((sku, positions[sku_index], answered, answered - sent))
            else:
                failures[str(answer.status)] += 1
        idle.put_nowait(connection)

    tasks = []
    start = time.monotonic() + 0.05
    for index in range(total):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1
        connection = await idle.get()
        tasks.append(asyncio.create_task(send(index, connection)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return {
        "records": records,
        "answered": answered_200,
        "failures": dict(failures),
        "late_sends": late,
        "sent": total,
        "elapsed": time.monotonic() - start,
    }


async def seed(spec: dict[str, Any]) -> dict[str, Any]:
    port, prefix, skus = spec["port"], spec["sku_prefix"], spec["skus"]
    pending = list(range(skus))
    statuses: Counter[int] = Counter()

    async def client() -> None:
        connection = Connection(port)
        try:
            while pending:
                sku = sku_name(prefix, pending.pop())
                path, body = command(sku, "increase_quantity", spec.get("quantity", SEED_QUANTITY))
                statuses[(await connection.post(path, body)).status] += 1
        finally:
            connection.close()

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(8))), timeout=120)
    return {"statuses": {str(k): v for k, v in statuses.items()}}


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


MODES = {"closed": closed_loop, "paced": paced, "seed": seed}


# --- the suite's side: a load generator running in its own process ---------


class LoadRun:
    """A load generator running in the background; ``result()`` waits for it."""

    def __init__(self, spec: dict[str, Any], *, timeout: float) -> None:
        # Imported here: the generator's own process needs none of it.
        from tests.support.environment import service_env
        from tests.support.processes import ROOT

        self.timeout = timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
            cwd=ROOT,
            env=service_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError(f"the load generator ran over {self.timeout:.0f} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{err[-3000:]}")
        return dict(json.loads(out))


def run_load(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    return LoadRun(spec, timeout=timeout).result()


def seed_skus(port: int, prefix: str, skus: int) -> None:
    """One large increase per SKU, so that the mixed load never ships more than there is."""
    result = run_load(
        {"mode": "seed", "port": port, "sku_prefix": prefix, "skus": skus}, timeout=180
    )
    if set(result["statuses"]) != {"200"}:
        raise RuntimeError(f"seeding the SKUs failed: {result['statuses']}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = asyncio.run(MODES[spec["mode"]](spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
