"""The workers' Prometheus folder: dramatiq's exporter (port 9191, a process
forked from dramatiq's parent, which never imports worker.py) serves the
metrics of these very workers, whether dramatiq_prom_db is set (as the Docker
image's entrypoint does) or not; the default folder goes away with the last
worker process."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.processes.state import wait
from tests.support.installation import Installation, project_listeners
from tests.support.processes import BIN, ROOT
from tests.support.prometheus import metric
from tests.support.waiting import wait_for_http

pytestmark = pytest.mark.processes

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def assert_exporter_serves_the_workers_own_counts(installation: Installation, sku: str) -> None:
    """A command, then the products view's delivery counted on the exporter,
    under this installation's own queue name (no other run has it)."""
    installation.start_api(workers=1)
    assert installation.increase(sku, 3).status_code == 200
    queue = f"{installation.queue_prefix}products_view"

    def counted() -> None:
        text = installation.worker_metrics()
        assert metric(text, "dramatiq_messages_total", queue_name=queue) >= 1, text[-3000:]

    wait(counted)


def test_the_default_metrics_folder_is_served_and_goes_away_with_the_last_worker_process(
    postgres, tmp_path: Path, rabbitmq: None, sku: str
) -> None:
    installation = Installation.create(
        postgres, tmp_path, name="metrics", listeners=project_listeners()
    )
    try:
        folder = Path(tempfile.gettempdir()) / f"cqrs-warehouse-{installation.queue_prefix}-metrics"
        # Without dramatiq_prom_db, the workers choose (and own) the folder.
        workers = installation.start_workers(processes=2, threads=2, env={"dramatiq_prom_db": None})

        def both_ready() -> None:
            assert workers.output().count("Worker process is ready for action.") == 2

        wait(both_ready)
        assert folder.is_dir()  # the processes' metrics live there meanwhile
        assert_exporter_serves_the_workers_own_counts(installation, sku)

        assert workers.terminate() == 0, workers.output()[-3000:]
        assert not folder.exists()
    finally:
        installation.close()


def test_the_images_entrypoint_gives_workers_and_exporter_one_folder_of_their_own(
    postgres, tmp_path: Path, rabbitmq: None, sku: str
) -> None:
    installation = Installation.create(
        postgres, tmp_path, name="image", listeners=project_listeners()
    )
    try:
        # As the image runs it: ENTRYPOINT + `dramatiq cqrs_warehouse.worker`.
        workers = installation.start(
            "dramatiq",
            ["sh", str(ENTRYPOINT), str(BIN / "dramatiq"), "cqrs_warehouse.worker", "-p", "2"],
            {
                "dramatiq_prom_db": None,
                "dramatiq_prom_host": "127.0.0.1",
                "dramatiq_prom_port": str(installation.metrics_port),
                "TMPDIR": str(tmp_path),
            },
        )
        wait_for_http(installation.metrics_url, [workers], timeout=60)
        assert_exporter_serves_the_workers_own_counts(installation, sku)
        # The entrypoint's folder (private), not the workers' default one.
        [folder] = tmp_path.glob("cqrs-warehouse-metrics.*")
        assert folder.stat().st_mode & 0o777 == 0o700
        assert list(folder.glob("counter_*.db"))
        default = (
            Path(tempfile.gettempdir()) / f"cqrs-warehouse-{installation.queue_prefix}-metrics"
        )
        assert not default.exists()
        assert workers.terminate() == 0, workers.output()[-3000:]
        assert folder.is_dir()  # given to the workers: theirs to use, not to remove
    finally:
        installation.close()
