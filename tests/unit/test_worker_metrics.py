"""The workers' Prometheus middleware counts each delivery of a listener's batch.

The counters are Dramatiq's own (same names and labels), in a registry of
the test's: ``after_process_boot`` would switch this test process to
Prometheus's multiprocess mode. The ops tests check the same against real
workers.
"""

from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
from typing import Any

import dramatiq
import prometheus_client
import pytest

QUEUE = "q_products_view"
LISTENER = "listener.products_view"
LABELS = ["queue_name", "actor_name"]


@pytest.fixture
def middleware(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    # Importing Dramatiq's Prometheus middleware creates its metrics folder.
    monkeypatch.setenv("dramatiq_prom_db", str(tmp_path))
    module = importlib.import_module("cqrs_warehouse.worker_metrics")
    registry = prometheus_client.CollectorRegistry()
    middleware = module.PrometheusPerDelivery([LISTENER, "listener.archive"])

    def counter(name: str) -> prometheus_client.Counter:
        return prometheus_client.Counter(name, name, LABELS, registry=registry)

    middleware.total_messages = counter("dramatiq_messages_total")
    middleware.total_errored_messages = counter("dramatiq_message_errors_total")
    middleware.total_retried_messages = counter("dramatiq_message_retries_total")
    middleware.total_rejected_messages = counter("dramatiq_message_rejects_total")
    middleware.inprogress_messages = prometheus_client.Gauge(
        "dramatiq_messages_inprogress", "", LABELS, registry=registry
    )
    middleware.inprogress_delayed_messages = prometheus_client.Gauge(
        "dramatiq_delayed_messages_inprogress", "", LABELS, registry=registry
    )
    middleware.message_durations = prometheus_client.Histogram(
        "dramatiq_message_duration_milliseconds", "", LABELS, registry=registry
    )
    middleware.registry = registry
    return middleware


def message(actor: str, deliveries: int, **options: Any) -> dramatiq.Message[Any]:
    envelopes = tuple({"id": f"m{n}"} for n in range(deliveries))
    return dramatiq.Message(
        queue_name=QUEUE, actor_name=actor, args=envelopes, kwargs={}, options=options
    )


def value(middleware: Any, name: str, actor: str = LISTENER) -> float:
    found = middleware.registry.get_sample_value(name, {"queue_name": QUEUE, "actor_name": actor})
    return found or 0.0


def process(middleware: Any, msg: dramatiq.Message[Any], exception: Exception | None = None):
    middleware.before_process_message(None, msg)
    middleware.after_process_message(None, msg, exception=exception)


def test_a_batch_counts_once_per_delivery_and_is_timed_once(middleware):
    process(middleware, message(LISTENER, 3))
    process(middleware, message(LISTENER, 1))
    assert value(middleware, "dramatiq_messages_total") == 4
    assert value(middleware, "dramatiq_message_errors_total") == 0
    assert value(middleware, "dramatiq_message_duration_milliseconds_count") == 2
    assert value(middleware, "dramatiq_messages_inprogress") == 0


def test_a_failed_batch_counts_an_error_per_delivery(middleware):
    process(middleware, message(LISTENER, 3), exception=RuntimeError("boom"))
    assert value(middleware, "dramatiq_messages_total") == 3
    assert value(middleware, "dramatiq_message_errors_total") == 3


def test_a_skipped_batch_counts_per_delivery(middleware):
    msg = message(LISTENER, 2)
    middleware.before_process_message(None, msg)
    middleware.after_skip_message(None, msg)
    assert value(middleware, "dramatiq_messages_total") == 2


def test_a_rejected_batch_counts_per_delivery(middleware):
    middleware.after_nack(None, message(LISTENER, 5))
    assert value(middleware, "dramatiq_message_rejects_total") == 5


def test_a_retried_batch_counts_per_delivery_and_a_first_enqueue_counts_nothing(middleware):
    middleware.after_enqueue(None, message(LISTENER, 4, retries=1), None)
    assert value(middleware, "dramatiq_message_retries_total") == 4
    middleware.after_enqueue(None, message(LISTENER, 4), None)
    assert value(middleware, "dramatiq_message_retries_total") == 4


def test_other_actors_count_once_per_message_whatever_their_arguments(middleware):
    drain = "drain_outbox"
    process(middleware, message(drain, 3), exception=RuntimeError("boom"))
    middleware.after_nack(None, message(drain, 3))
    middleware.after_enqueue(None, message(drain, 3, retries=1), None)
    assert value(middleware, "dramatiq_messages_total", drain) == 1
    assert value(middleware, "dramatiq_message_errors_total", drain) == 1
    assert value(middleware, "dramatiq_message_rejects_total", drain) == 1
    assert value(middleware, "dramatiq_message_retries_total", drain) == 1


def test_the_exposition_removes_the_empty_file_a_killed_process_left(tmp_path):
    """A worker process SIGKILLed while prometheus_client created a file left it
    empty, and every scrape of the workers' metrics failed until it was gone
    (seen in the fault suite). What dramatiq's exposition process does as it
    starts (``serve_metrics``) removes that file; the dead process's readable
    files stay (its counts are part of the totals), and so do a live process's."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    from cqrs_warehouse.worker_exposition import remove_unreadable_files

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead, live = int(ended.stdout), os.getpid()
    key = mmap_key("dramatiq_messages_total", "dramatiq_messages_total", LABELS, ["q", "a"], "")
    for pid, value in ((live, 3.0), (dead, 2.0)):
        written = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        written.write_value(key, value, 0.0)
        written.close()
    (tmp_path / f"histogram_{dead}.db").write_bytes(b"")  # killed as it created it
    (tmp_path / f"gauge_livesum_{live}.db").write_bytes(b"")  # being created
    (tmp_path / "README").write_text("")

    registry = prometheus_client.CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    with pytest.raises(struct.error):  # an empty file fails the scrape
        prometheus_client.generate_latest(registry)

    remove_unreadable_files(str(tmp_path))

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["README", f"counter_{live}.db", f"counter_{dead}.db", f"gauge_livesum_{live}.db"]
    )
    (tmp_path / f"gauge_livesum_{live}.db").unlink()  # (its process would size it)
    scraped = prometheus_client.generate_latest(registry).decode()
    assert 'dramatiq_messages_total{actor_name="a",queue_name="q"} 5.0' in scraped
