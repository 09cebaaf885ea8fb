"""Logging for every process: JSON lines when stderr is not a terminal, text
when it is (LOG_FORMAT=json|text overrides), each line carrying the context
fields (correlation id, message id and type, listener), and any password in
a URL masked; the service's own lines from LOG_LEVEL up (INFO: a line per
batch the drain publishes or a listener applies; DEBUG: a line per message
too). Called once by the CLI, the web app factory and the worker module.
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

from .messaging.context import ContextFilter
from .messaging.errors import ConfigurationError
from .settings import redact_url

_FIELDS = "%(correlation_id)s %(trace_id)s %(span_id)s %(message_id)s %(message_type)s %(listener)s"


class RedactCredentials(logging.Filter):
    """Masks the password of any URL in a log line: message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # Every URL the pattern masks has "://"; most lines have none.
        masked = redact_url(message) if "://" in message else message
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            # Format the traceback here, masked; formatters use exc_text when
            # exc_info is gone.
            record.exc_text = redact_url(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_url(record.exc_text)
        return True


_TEXT_FIELDS = ("correlation_id", "trace_id", "span_id", "message_id", "message_type", "listener")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}"
            for name in _TEXT_FIELDS
            if getattr(record, name, None)
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def wants_json() -> bool:
    chosen = os.environ.get("LOG_FORMAT", "").lower()
    if chosen in ("json", "text"):
        return chosen == "json"
    stream = sys.__stderr__
    return not (stream is not None and stream.isatty())


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ACTORS = "cqrs_warehouse.messaging.listening.actors"


def service_level() -> int:
    """LOG_LEVEL: the level of the service's own loggers (libraries stay at INFO)."""
    raw = os.environ.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if raw not in LEVELS:
        raise ConfigurationError(f"LOG_LEVEL={raw!r} must be one of {', '.join(LEVELS)}")
    return int(getattr(logging, raw))


def configure(level: int = logging.INFO) -> None:
    """Format the root logger's handlers (adding one on stderr if it has none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level)
    service = service_level()
    logging.getLogger("cqrs_warehouse").setLevel(service)
    # Dramatiq's actor loggers carry the actors' module name; their DEBUG lines
    # (every message's arguments) are the library's, not the service's.
    logging.getLogger(ACTORS).setLevel(max(service, logging.INFO))
    formatter: logging.Formatter
    if wants_json():
        formatter = JsonFormatter(
            f"%(asctime)s %(levelname)s %(name)s %(message)s {_FIELDS}",
            rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
        )
    else:
        formatter = _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No format here shows where a line was logged from: logging need not
    # walk the stack for it on every line (the logging HOWTO's "Optimization").
    logging._srcfile = None
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
            handler.addFilter(RedactCredentials())
    logging.getLogger("pika").setLevel(logging.WARNING)
