"""Settings read once from the environment into a frozen object. Used by bootstrap and the CLI."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .messaging.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///cqrs-warehouse.db"
_QUEUE_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9._-]{0,63})?$")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str | None = None
    listeners_config: str = "config/listeners.yaml"
    schemas_dir: str = "schemas"
    queue_prefix: str = ""
    low_quantity_threshold: int = 5
    sweep_interval: float = 2.0
    drain_batch_size: int = 500
    listener_batch_size: int = 100
    api_token: str | None = None
    max_body_bytes: int = 16384
    consistency_timeout: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        prefix = env.get("QUEUE_PREFIX", "")
        if not _QUEUE_PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"QUEUE_PREFIX={prefix!r}: must start with a letter or '_' and hold only "
                "letters, digits, '.', '_' and '-' (at most 64)"
            )
        broker_url = env.get("BROKER_URL") or None
        if broker_url is not None and not broker_url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError("BROKER_URL must be an amqp:// or amqps:// URL")
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            broker_url=broker_url,
            listeners_config=env.get("LISTENERS_CONFIG") or "config/listeners.yaml",
            schemas_dir=env.get("SCHEMAS_DIR") or "schemas",
            queue_prefix=prefix,
            low_quantity_threshold=_number(env, "LOW_QUANTITY_THRESHOLD", 5, int, minimum=0),
            sweep_interval=_number(env, "OUTBOX_SWEEP_INTERVAL", 2.0, float, minimum=0.05),
            drain_batch_size=_number(env, "OUTBOX_BATCH_SIZE", 500, int, minimum=1),
            listener_batch_size=_number(env, "LISTENER_BATCH_SIZE", 100, int, minimum=1),
            api_token=env.get("API_TOKEN") or None,
            max_body_bytes=_number(env, "MAX_BODY_BYTES", 16384, int, minimum=64),
            consistency_timeout=_number(env, "CONSISTENCY_TIMEOUT", 5.0, float, minimum=0.0),
        )

    @property
    def notify_channel(self) -> str:
        return f"{self.queue_prefix}outbox"

    @property
    def applied_channel(self) -> str:
        return f"{self.queue_prefix}applied"

    def queue_name(self, name: str) -> str:
        return f"{self.queue_prefix}{name}"


def _number(env: Mapping[str, str], key: str, default: Any, kind: type, *, minimum: Any) -> Any:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{key}={raw!r} is not a {kind.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{key}={raw!r} must be a finite number")
    if value < minimum:
        raise ConfigurationError(f"{key}={raw!r} must be at least {minimum}")
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
