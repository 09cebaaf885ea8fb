"""Gunicorn settings for the API: `gunicorn -c gunicorn.conf.py`.

`-b HOST:PORT` overrides the bind.

Configuration of the service itself comes from the environment
(DATABASE_URL, BROKER_URL, LISTENERS_CONFIG, QUEUE_PREFIX); see the README.
"""

import logging.config
import multiprocessing
import os
import tempfile

from gunicorn import glogging

wsgi_app = "cqrs_warehouse.web:app_from_environment()"
bind = [os.environ.get("BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
# The app is built in each worker after the fork: no connection is shared.
preload_app = False
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
control_socket_disable = True


def _logconfig() -> dict:
    """gunicorn's own lines in the service's format (JSON unless on a terminal)."""
    from cqrs_warehouse.logs import wants_json

    json_format = {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s "
        "%(correlation_id)s %(trace_id)s %(span_id)s %(message_id)s %(message_type)s "
        "%(listener)s",
        "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
    }
    text_format = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "service",
        "filters": ["context", "redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "cqrs_warehouse.messaging.context.ContextFilter"},
            "redact": {"()": "cqrs_warehouse.logs.RedactCredentials"},
        },
        "formatters": {"service": json_format if wants_json() else text_format},
        "handlers": {"service": handler},
        "root": {"level": "INFO", "handlers": ["service"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["service"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["service"], "propagate": False},
        },
    }


class _ServiceLogger(glogging.Logger):
    """gunicorn's logger, its lines formatted by ``_logconfig()``.

    Not through the ``logconfig_dict`` setting: gunicorn counts any logging
    configuration as an access log, and would build the access-log fields of
    every request and write a line the service writes itself
    (docs/decisions/0016-gunicorn-logger-class.md). Here only
    GUNICORN_ACCESS_LOG turns access lines on (in the service's format, on
    stderr). ``setup`` runs again on a configuration reload (SIGHUP), which
    keeps the format.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logging.config.dictConfig(_logconfig())


logger_class = _ServiceLogger

# Metrics of every gunicorn worker add up in one /metrics (Prometheus's
# multiprocess mode): each arbiter gets a folder of its own unless one is set.
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="cqrs-warehouse-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir is not None:
        import shutil

        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def on_starting(server):
    """Refuse a bad environment or listeners.yaml once, in one line, before any worker boots."""
    import sys

    from cqrs_warehouse.messaging.errors import MessagingError
    from cqrs_warehouse.runtime import build

    try:
        runtime = build()
        runtime.routing  # noqa: B018 (loads and checks it; nothing connects)
    except MessagingError as error:
        print(f"cqrs-warehouse api: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    waiting = runtime.settings.consistency_max_waiting
    if waiting >= server.cfg.threads:
        print(
            f"cqrs-warehouse api: CONSISTENCY_MAX_WAITING={waiting} must be below the "
            f"{server.cfg.threads} threads of a worker (GUNICORN_THREADS), or waiting reads "
            "could take every thread from writes and health checks",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)
