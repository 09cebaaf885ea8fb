"""The workers' default Prometheus folder is removed when the last of them stops."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.conftest import BROKER_URL, PostgresDatabases, unique_name
from tests.e2e.harness import (
    BIN,
    ROOT,
    Service,
    assert_eventually,
    delete_rabbitmq_topology,
    project_listeners,
    require_rabbitmq,
    run_to_exit,
    service_env,
)


def test_the_default_metrics_folder_goes_away_with_the_last_worker_process(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    require_rabbitmq()
    prefix = unique_name("metrics") + "."
    env = service_env(
        DATABASE_URL=postgres_databases.create(),
        BROKER_URL=BROKER_URL,
        QUEUE_PREFIX=prefix,
        LISTENERS_CONFIG=str(ROOT / "config" / "listeners.yaml"),
    )
    folder = Path(tempfile.gettempdir()) / f"cqrs-warehouse-{prefix}-metrics"
    migrated = run_to_exit([str(BIN / "cqrs-warehouse"), "migrate"], env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.output
    workers = Service.start(
        "dramatiq",
        [str(BIN / "dramatiq"), "cqrs_warehouse.worker", "-p", "2", "-t", "2"],
        env=env,
        cwd=tmp_path,
        log_dir=tmp_path,
    )
    try:

        def both_ready() -> None:
            assert workers.output().count("Worker process is ready for action.") == 2

        assert_eventually(both_ready)
        assert folder.is_dir()  # the processes' metrics live there meanwhile

        assert workers.terminate() == 0, workers.output()[-3000:]
        assert not folder.exists()
    finally:
        workers.terminate()
        workers.kill_leftovers()
        delete_rabbitmq_topology(prefix, [entry["name"] for entry in project_listeners()])
