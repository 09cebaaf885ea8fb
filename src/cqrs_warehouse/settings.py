"""Settings read once from the environment into frozen objects. Used by the runtime and the CLI.

Each field names its environment variable (``variable``), so the core's
``Settings`` and every slice's own settings class are read the same way
(``read_settings``), and the list of variables the service reads is derived
from them (``environment_variables``), for the operator and for the tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .messaging.errors import ConfigurationError
from .messaging.signing import MessageKeys

DEFAULT_DATABASE_URL = "sqlite:///cqrs-warehouse.db"
#: The slices an installation runs when SLICES is not set.
DEFAULT_SLICES = ("cqrs_warehouse.warehouse",)
#: QUEUE_TYPE's values: RabbitMQ's queue types the service declares its queues as.
QUEUE_TYPES = ("classic", "quorum")

_QUEUE_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9._-]*)?$")
#: The longest names listeners.yaml accepts (messaging/routing.py), and what
#: QUEUE_PREFIX is put in front of: (limit, bytes the prefix is followed by, what).
_PREFIX_LIMITS = (
    (63, len("applied"), "PostgreSQL's NOTIFY channel names (QUEUE_PREFIX + 'applied')"),
    (255, 200, "AMQP exchange names (QUEUE_PREFIX + an exchange name of up to 200)"),
    (
        255,
        100 + len(".DQ"),
        "AMQP queue names (QUEUE_PREFIX + a listener name of up to 100 + '.DQ')",
    ),
)
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_PASSWORD_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]*@", re.IGNORECASE)

#: Variables read outside the settings objects: by gunicorn.conf.py, the log
#: set-up and Dramatiq's and Prometheus's own code.
PROCESS_VARIABLES = (
    "BIND",
    "WEB_CONCURRENCY",
    "GUNICORN_THREADS",
    "GUNICORN_ACCESS_LOG",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
    "dramatiq_prom_host",
    "dramatiq_prom_port",
    "dramatiq_prom_db",
    # OpenTelemetry's (messaging/tracing.py), read by the SDK and its OTLP exporter.
    *(
        f"OTEL_{name}"
        for name in (
            "SDK_DISABLED",
            "SERVICE_NAME",
            "RESOURCE_ATTRIBUTES",
            "PROPAGATORS",
            "TRACES_EXPORTER",
            "TRACES_SAMPLER",
            "TRACES_SAMPLER_ARG",
            "BSP_SCHEDULE_DELAY",
            "BSP_MAX_QUEUE_SIZE",
            "BSP_MAX_EXPORT_BATCH_SIZE",
            "BSP_EXPORT_TIMEOUT",
            "EXPORTER_OTLP_ENDPOINT",
            "EXPORTER_OTLP_TRACES_ENDPOINT",
            "EXPORTER_OTLP_HEADERS",
            "EXPORTER_OTLP_TRACES_HEADERS",
            "EXPORTER_OTLP_TIMEOUT",
            "EXPORTER_OTLP_TRACES_TIMEOUT",
            "EXPORTER_OTLP_PROTOCOL",
            "EXPORTER_OTLP_TRACES_PROTOCOL",
            "EXPORTER_OTLP_COMPRESSION",
            "EXPORTER_OTLP_TRACES_COMPRESSION",
            "EXPORTER_OTLP_CERTIFICATE",
            "EXPORTER_OTLP_TRACES_CERTIFICATE",
            "PYTHON_FALCON_EXCLUDED_URLS",
        )
    ),
)

T = TypeVar("T")


def variable(name: str, default: Any, parse: Callable[[str, str], Any] = lambda _, raw: raw) -> Any:
    """A settings field read from the environment variable ``name``; an unset
    or empty variable means ``default``. ``parse(name, raw)`` converts the
    text and raises ConfigurationError naming the variable."""
    return dataclasses.field(default=default, metadata={"variable": name, "parse": parse})


def number(kind: type, *, minimum: float) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f"{name}={raw!r} must be a finite number")
        if value < minimum:
            raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
        return value

    return parse


def read_settings(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """An instance of the settings dataclass ``cls`` from ``environ`` (default: the process's)."""
    env = os.environ if environ is None else environ
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.metadata.get("variable")
        raw = env.get(name) if name else None
        if raw:
            values[field.name] = field.metadata["parse"](name, raw)
    return cls(**values)


def variables_of(cls: type) -> tuple[str, ...]:
    """The environment variables a settings dataclass reads."""
    return tuple(
        f.metadata["variable"] for f in dataclasses.fields(cls) if "variable" in f.metadata
    )


def environment_variables(slice_settings: Iterable[type] = ()) -> tuple[str, ...]:
    """Every variable the service reads: the core's, the slices' and the processes'."""
    names = [*variables_of(Settings)]
    for cls in slice_settings:
        names += variables_of(cls)
    return (*names, *PROCESS_VARIABLES)


def _queue_prefix(name: str, raw: str) -> str:
    if not _QUEUE_PREFIX.fullmatch(raw):
        raise ConfigurationError(
            f"{name}={raw!r}: must start with a letter or '_' and hold only "
            "letters, digits, '.', '_' and '-'"
        )
    broken = [
        f"{what} are at most {limit} bytes (a prefix of at most {limit - after})"
        for limit, after, what in _PREFIX_LIMITS
        if len(raw) + after > limit  # (ASCII: a character is a byte)
    ]
    if broken:
        raise ConfigurationError(f"{name} is {len(raw)} characters, too long: {'; '.join(broken)}")
    return raw


def _broker_url(name: str, raw: str) -> str:
    """One URL, or the URLs of a cluster's nodes separated by ';' (as Dramatiq
    splits them: each connection tries them in turn)."""
    urls = [url.strip() for url in raw.split(";")]
    if not all(urls):
        raise ConfigurationError(f"{name} has an empty URL between its ';'")
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"{name}: {redact_url(url)!r} is not an amqp:// or amqps:// URL"
            )
    return ";".join(urls)


def _queue_type(name: str, raw: str) -> str:
    if raw not in QUEUE_TYPES:
        raise ConfigurationError(f"{name}={raw!r} must be one of {', '.join(QUEUE_TYPES)}")
    return raw


def _module_list(name: str, raw: str) -> tuple[str, ...]:
    paths = tuple(part.strip() for part in raw.split(",") if part.strip())
    for path in paths:
        if not _MODULE_PATH.fullmatch(path):
            raise ConfigurationError(f"{name}: {path!r} is not a module path")
    if len(set(paths)) != len(paths):
        raise ConfigurationError(f"{name}={raw!r} names a slice twice")
    return paths


@dataclasses.dataclass(frozen=True)
class Settings:
    """The core's settings. A slice's own (LOW_QUANTITY_THRESHOLD...) are its slice's."""

    database_url: str = variable("DATABASE_URL", DEFAULT_DATABASE_URL)
    broker_url: str | None = variable("BROKER_URL", None, _broker_url)
    listeners_config: str = variable("LISTENERS_CONFIG", "config/listeners.yaml")
    schemas_dir: str = variable("SCHEMAS_DIR", "schemas")
    queue_prefix: str = variable("QUEUE_PREFIX", "", _queue_prefix)
    queue_type: str = variable("QUEUE_TYPE", "classic", _queue_type)
    slices: tuple[str, ...] = variable("SLICES", DEFAULT_SLICES, _module_list)
    sweep_interval: float = variable("OUTBOX_SWEEP_INTERVAL", 2.0, number(float, minimum=0.05))
    drain_batch_size: int = variable("OUTBOX_BATCH_SIZE", 500, number(int, minimum=1))
    listener_batch_size: int = variable("LISTENER_BATCH_SIZE", 100, number(int, minimum=1))
    api_token: str | None = variable("API_TOKEN", None)
    max_body_bytes: int = variable("MAX_BODY_BYTES", 16384, number(int, minimum=64))
    consistency_timeout: float = variable("CONSISTENCY_TIMEOUT", 5.0, number(float, minimum=0.0))
    consistency_max_waiting: int = variable("CONSISTENCY_MAX_WAITING", 2, number(int, minimum=0))
    idempotency_key_ttl: int = variable("IDEMPOTENCY_KEY_TTL", 86400, number(int, minimum=1))
    # How long tables keep rows, in seconds (the workers' sweep prunes them;
    # an archive pruned cannot rebuild: unset, it keeps everything).
    processed_messages_retention: float = variable(
        "PROCESSED_MESSAGES_RETENTION", 604800.0, number(float, minimum=60.0)
    )
    archive_retention: float | None = variable(
        "ARCHIVE_RETENTION", None, number(float, minimum=3600.0)
    )
    # PostgreSQL only; libpq waits at least 2 s to connect. 0 means no statement or lock timeout.
    database_connect_timeout: int = variable("DATABASE_CONNECT_TIMEOUT", 5, number(int, minimum=2))
    database_statement_timeout: float = variable(
        "DATABASE_STATEMENT_TIMEOUT", 30.0, number(float, minimum=0.0)
    )
    database_lock_timeout: float = variable(
        "DATABASE_LOCK_TIMEOUT", 10.0, number(float, minimum=0.0)
    )
    #: The keys that sign and verify listener messages (its repr shows none).
    message_keys: MessageKeys | None = variable("MESSAGE_KEY", None, MessageKeys.parse)  # noqa: RUF009 (frozen)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return read_settings(cls, environ)

    @property
    def notify_channel(self) -> str:
        """The PostgreSQL channel on which a commit wakes the drain."""
        return f"{self.queue_prefix}outbox"

    @property
    def applied_channel(self) -> str:
        """The PostgreSQL channel on which listeners announce applied positions."""
        return f"{self.queue_prefix}applied"

    def prefixed(self, name: str) -> str:
        """A broker name of this installation: a queue, the exchange."""
        return f"{self.queue_prefix}{name}"


def redact_url(text: str) -> str:
    """``text`` with the password of any URL in it replaced, for logs and error messages."""
    return _PASSWORD_IN_URL.sub(r"\1***@", text)
