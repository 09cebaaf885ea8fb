"""The workers' default Prometheus folder is removed when the last of them stops."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.processes.state import wait
from tests.support.installation import Installation, project_listeners
from tests.support.services import Postgres

pytestmark = pytest.mark.processes


def test_the_default_metrics_folder_goes_away_with_the_last_worker_process(
    postgres: Postgres, tmp_path: Path, rabbitmq: None
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

        assert workers.terminate() == 0, workers.output()[-3000:]
        assert not folder.exists()
    finally:
        installation.close()
