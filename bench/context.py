"""What every scenario of one suite run shares: servers, names, knobs, logs,
and the processes and installations it started (stopped and removed at the
end of the run, also after a failure or Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.support.cluster import Cluster
from tests.support.installation import Installation
from tests.support.processes import ROOT, Service
from tests.support.services import Postgres

from . import infra
from .knobs import Knobs


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Routing:
    """The listeners.yaml the service runs with: what the suite must wait for."""

    path: Path
    entries: tuple[dict[str, Any], ...]  # its listeners, as written in it

    @property
    def listeners(self) -> tuple[str, ...]:
        return tuple(str(entry["name"]) for entry in self.entries)

    @classmethod
    def load(cls, path: Path) -> Routing:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(path=path, entries=tuple(dict(e) for e in document["listeners"]))


@dataclass
class Context:
    tag: str  # starts every database and queue name of this suite run
    knobs: Knobs
    postgres: Postgres
    routing: Routing
    log_dir: Path
    broker_url: str = infra.BROKER_URL
    migrated_template: str = ""  # an empty, migrated database to copy per run
    seeded_template: str = ""  # the migrated one with the SKUs seeded (service.py)
    notes: list[str] = field(default_factory=list)  # what went wrong but was recovered
    services: list[Service] = field(default_factory=list)
    installations: list[Installation] = field(default_factory=list)
    #: The 3-node RabbitMQ cluster of the quorum scenario, started on first use.
    cluster: Cluster | None = None
    quorum_runs: int = 0  # runs of the quorum scenario so far (it rotates its order)

    def __post_init__(self) -> None:
        infra.require_local(self.broker_url)

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Service:
        """A process of the suite's own (a baseline, a backlog writer), in a group of
        its own, from the project folder, its output in the run's log folder."""
        service = Service.start(f"{self.tag}_{name}", args, env=env, cwd=ROOT, log_dir=self.log_dir)
        self.services.append(service)
        return service

    def stop_all(self) -> None:
        """Every process this run started and has not stopped yet."""
        for installation in reversed(self.installations):
            for service in reversed(installation.services):
                service.terminate(timeout=10)
        for service in reversed(self.services):
            service.terminate(timeout=10)
        self.services.clear()


def listeners_config() -> Path:
    """The routing file the service would use from the project folder (LISTENERS_CONFIG)."""
    configured = os.environ.get("LISTENERS_CONFIG") or "config/listeners.yaml"
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


@contextlib.contextmanager
def suite_run(knobs: Knobs, *, keep_logs: bool) -> Iterator[Context]:
    """A new tag, log folder and context; at the end, every process, database,
    queue and log of the run removed, each step even if one before it failed."""
    tag = infra.new_tag()
    log_dir = Path(tempfile.mkdtemp(prefix=f"{tag}_logs_"))
    ctx = Context(
        tag=tag,
        knobs=knobs,
        postgres=infra.postgres(),
        routing=Routing.load(listeners_config()),
        log_dir=log_dir,
    )
    try:
        yield ctx
    finally:
        steps: list[tuple[str, Callable[[], object]]] = [
            ("stopping processes", ctx.stop_all),
            ("stopping the RabbitMQ cluster", lambda: ctx.cluster and ctx.cluster.close()),
            ("dropping the databases", lambda: infra.sweep_databases(ctx.postgres, tag)),
            ("deleting queues", lambda: infra.sweep_broker(tag, ctx.broker_url)),
        ]
        if not keep_logs:
            steps.append(("removing logs", lambda: shutil.rmtree(log_dir, ignore_errors=True)))
        for what, step in steps:
            try:
                step()
            except Exception as error:
                log(f"clean-up: {what} failed: {error!r}; names start with {tag}")
