"""Read-your-writes waits are bounded on the real gunicorn: reads waiting for a
token never take the threads that writes and health checks need, and a
token the commands never issued is refused without waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from cqrs_warehouse.messaging.consistency import encode_token
from tests.processes.conftest import logs_on_failure
from tests.support.installation import Installation
from tests.support.services import Postgres
from tests.support.waiting import eventually

pytestmark = pytest.mark.processes

THREADS = 4
MAX_WAITING = 2
READS = 12


@pytest.fixture
def idle(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path, rabbitmq: None
) -> Iterator[Installation]:
    """The API alone (one gunicorn worker of THREADS threads); no listener runs
    until the test starts the workers, so every token waits."""
    installation = Installation.create(
        postgres,
        tmp_path,
        name="waits",
        settings={
            "CONSISTENCY_TIMEOUT": "120",
            "CONSISTENCY_MAX_WAITING": str(MAX_WAITING),
            "GUNICORN_THREADS": str(THREADS),
        },
    )
    with logs_on_failure(request, installation):
        installation.start_api(workers=1)
        yield installation


def test_waiting_reads_never_starve_writes_and_health_checks(idle, sku):
    token = idle.increase(sku, 5).json()["consistency_token"]
    answers: list[requests.Response] = []

    def read() -> None:
        answers.append(
            requests.get(
                f"{idle.base_url}/warehouse/products/{sku}",
                params={"after": token},
                headers={"Connection": "close"},
                timeout=150,
            )
        )

    readers = [threading.Thread(target=read) for _ in range(READS)]
    for reader in readers:
        reader.start()

    # Beyond the cap, reads are refused at once with Retry-After...
    def refused_beyond_the_cap() -> None:
        assert len(answers) == READS - MAX_WAITING

    eventually(refused_beyond_the_cap, timeout=60)
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["title"] == "Too many waiting reads."
        assert answer.headers["Retry-After"] == "1"

    # ...and while the others wait, a write and the health checks are answered.
    assert idle.increase(sku, 1).status_code == 200
    assert idle.get("/readyz").status_code == 200
    assert idle.get("/livez").status_code == 200
    assert sum(reader.is_alive() for reader in readers) == MAX_WAITING

    # The waiting reads are answered once the view applies the write.
    idle.start_workers(processes=1)
    for reader in readers:
        reader.join(timeout=120)
    assert not any(reader.is_alive() for reader in readers)
    waited = answers[READS - MAX_WAITING :]
    assert [a.status_code for a in waited] == [200] * MAX_WAITING
    assert all(a.json()["quantity"] >= 5 for a in waited)


def test_a_token_never_issued_is_refused_without_waiting(idle, sku):
    idle.increase(sku, 5)
    for token in (encode_token(sku, 2), encode_token(f"{sku}-never", 1)):
        answer = idle.get(f"/warehouse/products/{sku}", params={"after": token})
        assert answer.status_code == 400, answer.text
        assert "not issued by this service" in answer.json()["description"]
