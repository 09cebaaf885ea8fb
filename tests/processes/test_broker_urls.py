"""Several URLs in BROKER_URL, and QUEUE_TYPE, with the real processes on the
machine's RabbitMQ: every connection (the drain, the listeners, readiness,
the CLI) goes past a node that does not answer to the next one; workers
asked for quorum queues where classic ones exist stop with one clear line.
(The 3-node cluster's own cases are in tests/faults/test_cluster.py.)"""

from __future__ import annotations

import pytest

from tests.processes.conftest import logs_on_failure
from tests.processes.state import wait_until_view_matches_commands
from tests.support.installation import Installation
from tests.support.processes import free_port
from tests.support.services import BROKER_URL

pytestmark = pytest.mark.processes


def test_every_connection_goes_on_to_the_next_url_when_the_first_does_not_answer(
    request, postgres, tmp_path, rabbitmq, sku
):
    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # no server on this port
    installation = Installation.create(
        postgres, tmp_path, name="urls", broker_url=f"{nobody};{BROKER_URL}"
    )
    with logs_on_failure(request, installation):
        installation.start_workers(processes=1)
        installation.start_api(workers=1)  # returns once /readyz says ready
        assert installation.get("/readyz").status_code == 200
        assert installation.increase(sku, 7).status_code == 200
        assert installation.ship(sku, 2).status_code == 200
        wait_until_view_matches_commands(installation)
        assert {"sku": sku, "quantity": 5} in installation.products()
        status = installation.cli("routes", "status")
        assert status.returncode == 0, status.output
        assert f"{installation.queue_prefix}products_view" in status.output


def test_workers_asked_for_quorum_queues_where_classic_ones_exist_stop_with_one_clear_line(
    request, postgres, tmp_path, rabbitmq
):
    installation = Installation.create(postgres, tmp_path, name="qtype")
    with logs_on_failure(request, installation):
        installation.start_workers(processes=1)  # classic queues, the default
        installation.stop_workers()

        workers = installation.start_workers(processes=1, env={"QUEUE_TYPE": "quorum"}, wait=False)

        assert workers.wait(60) == 2
        said = [line for line in workers.output().splitlines() if "QUEUE_TYPE" in line]
        assert len(said) == 1, workers.output()
        assert said[0].startswith("cqrs-warehouse worker: queue ")
        assert "exists with another type than QUEUE_TYPE=quorum" in said[0]
        assert "Changing QUEUE_TYPE" in said[0]
        assert "Traceback" not in workers.output()
        # Nothing was changed: the classic workers start again (once booted,
        # they serve their metrics).
        installation.start_workers(processes=1)
