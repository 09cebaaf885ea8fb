"""What every scenario of one suite run shares: servers, names, knobs, logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .infra import BROKER_URL, Postgres, require_local
from .knobs import Knobs
from .processes import ROOT


@dataclass(frozen=True)
class Routing:
    """The listeners.yaml the service runs with: what the suite must wait for."""

    path: Path
    exchange: str
    listeners: tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> Routing:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(
            path=path,
            exchange=str(document["exchange"]["name"]),
            listeners=tuple(str(entry["name"]) for entry in document["listeners"]),
        )


@dataclass
class Context:
    tag: str  # starts every database and queue name of this suite run
    knobs: Knobs
    postgres: Postgres
    routing: Routing
    log_dir: Path
    broker_url: str = BROKER_URL
    migrated_template: str = ""  # an empty, migrated database to copy per run
    seeded_template: str = ""  # the migrated one with the SKUs seeded (installation.py)
    notes: list[str] = field(default_factory=list)  # what went wrong but was recovered

    def __post_init__(self) -> None:
        require_local(self.broker_url)


def listeners_config() -> Path:
    """The routing file the service would use from the project folder (LISTENERS_CONFIG)."""
    configured = os.environ.get("LISTENERS_CONFIG") or "config/listeners.yaml"
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path
