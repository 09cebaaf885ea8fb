"""What a suite run measured: every run's figures, the machine they were measured on,
and each reported figure's median, ratio to its baseline and verdict (``rows``).
Shown by bench.report."""

from __future__ import annotations

import datetime
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .figures import Figure, figures, median
from .knobs import Knobs

PACKAGES = ("dramatiq", "falcon", "peewee", "gunicorn", "pika", "psycopg2-binary", "fastavro")


@dataclass
class Environment:
    cpu_model: str
    cores: int
    ram_gib: float
    load_before: str
    versions: dict[str, str]
    postgres_settings: dict[str, str]
    date: str
    source: str

    @classmethod
    def read(
        cls,
        postgres_version: str,
        postgres_settings: dict[str, str],
        rabbitmq_version: str,
        source: str,
    ) -> Environment:
        versions = {
            "python": platform.python_version(),
            "postgresql": postgres_version,
            "rabbitmq": rabbitmq_version,
        }
        for package in PACKAGES:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = "not installed"
        one, five, fifteen = os.getloadavg()
        return cls(
            cpu_model=cpu_model(),
            cores=os.cpu_count() or 0,
            ram_gib=_ram_gib(),
            load_before=f"{one:.2f} {five:.2f} {fifteen:.2f}",
            versions=versions,
            postgres_settings=postgres_settings,
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            source=source,
        )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Results:
    """Every run's value of every figure, and what went wrong."""

    values: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    load_averages: list[float] = field(default_factory=list)

    def add(self, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            self.values.setdefault(key, []).append(float(value))

    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return median(values) if values else None


@dataclass
class Row:
    figure: Figure
    median: float | None
    runs: list[float]
    baseline: float | None
    ratio: float | None
    met: bool | None


def rows(results: Results, listeners: tuple[str, ...], knobs: Knobs) -> list[Row]:
    out = []
    for figure in figures(
        listeners, knobs.backlog_small, knobs.backlog_large, knobs.latency_worker_threads
    ):
        value = results.median(figure.key)
        baseline = results.median(figure.baseline) if figure.baseline else None
        ratio = (
            value / baseline
            if value is not None and baseline and not math.isnan(value) and not math.isinf(value)
            else None
        )
        met = None
        if figure.check is not None and value is not None and not math.isnan(value):
            met = figure.check(value, ratio)
            if figure.key.endswith(".seconds"):
                # A projected time is no proof: only runs that finished can meet it.
                completed = results.median(figure.key.replace(".seconds", ".completed"))
                met = met and completed == 1
        out.append(Row(figure, value, results.values.get(figure.key, []), baseline, ratio, met))
    return out
