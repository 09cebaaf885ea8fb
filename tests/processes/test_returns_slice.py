"""A second slice, added with no edit under src/: the tests' returns slice
(tests/slices/returns) runs end to end beside the warehouse, in real gunicorn
and dramatiq processes on PostgreSQL and RabbitMQ.

The installation adds it the way its README says: SLICES names it, and
listeners.yaml has a ``returns_view`` listener (handler
tests.slices.returns:ReturnsView) beside the project's listeners and the
watcher. Its setting (RETURNS_MOST_PER_RETURN) comes from the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.consistency import decode_token
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.settings import DEFAULT_SLICES
from cqrs_warehouse.slices import load_slices
from tests.processes.conftest import logs_on_failure
from tests.processes.state import INCREASED, NOTIFIED, SHIPPED, messages, wait
from tests.slices.returns.returns import PRODUCT_RETURNED, ReturnCount, ReturnedQuantity
from tests.support.environment import SCHEMAS
from tests.support.installation import RECORDERS, WATCHER, Installation, project_listeners
from tests.support.prometheus import metric
from tests.support.services import BROKER_URL, Postgres

pytestmark = pytest.mark.processes

RETURNS = "tests.slices.returns"
RETURNS_VIEW = {
    "name": "returns_view",
    "handler": "tests.slices.returns:ReturnsView",
    "bindings": ["Returns.Events.#"],
}
MOST_PER_RETURN = 50


@pytest.fixture(scope="module")
def returns(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[Installation]:
    installation = Installation.create(
        postgres,
        tmp_path_factory.mktemp("returns"),
        name="returns",
        slices=(*DEFAULT_SLICES, RECORDERS, RETURNS),
        listeners=[*project_listeners(), RETURNS_VIEW, WATCHER],
        settings={"RETURNS_MOST_PER_RETURN": str(MOST_PER_RETURN)},
    )
    with logs_on_failure(request, installation):
        installation.start_workers()
        installation.start_api()
        yield installation


def record_return(installation: Installation, sku: str, body: Any) -> Any:
    return installation.post(f"/returns/{sku}", body)


def returned(installation: Installation, sku: str, token: str) -> dict[str, Any]:
    response = installation.get(f"/returns/{sku}", params={"after": token})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_installation_runs_the_slices_named_in_slices(returns):
    assert returns.env["SLICES"] == f"cqrs_warehouse.warehouse,{RECORDERS},{RETURNS}"
    assert [entry["name"] for entry in returns.listeners] == [
        *(entry["name"] for entry in project_listeners()),
        "returns_view",
        "watcher",
    ]


def test_migrate_created_the_slices_tables_and_status_lists_its_migration(returns):
    status = returns.cli("migrate", "--status")
    assert status.returncode == 0, status.output
    assert "applied  returns/0001_initial" in status.stdout.splitlines(), status.stdout
    assert not [line for line in status.stdout.splitlines() if line.startswith("pending")]
    with returns.reading() as runtime:
        for table in ("returns_counts", "returns_view"):
            assert runtime.database.table_exists(table, schema="returns"), table


def test_a_return_goes_through_rabbitmq_to_its_view_the_watcher_and_the_archive(returns, sku):
    before = returns.worker_metrics()

    response = record_return(returns, sku, {"quantity": 3})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sku"] == sku
    token = body["consistency_token"]
    assert decode_token(token) == (f"returns:{sku}", 1)
    # Read-your-writes: the view has applied it when the read answers
    assert returned(returns, sku, token) == {"sku": sku, "returned": 3}
    # The workers received it from RabbitMQ: the watcher has it, as published...
    received = wait(lambda: _one(messages(returns, sku, PRODUCT_RETURNED)))
    assert received.id == body["message_id"]
    assert (received.type, received.schema_version) == (PRODUCT_RETURNED, 1)
    assert received.payload == {"sku": sku, "quantity": 3}
    assert (received.stream, received.position) == (f"returns:{sku}", 1)
    # ...and the archive kept it
    with returns.reading():
        archived = ArchivedMessage.get_or_none(ArchivedMessage.message_id == body["message_id"])
        assert archived is not None
        assert (archived.type, archived.schema_version) == (PRODUCT_RETURNED, 1)

    def published() -> None:
        # The drain lets the row go once RabbitMQ has confirmed the message,
        # which may be after the listeners applied it (they get it as it is
        # routed: docs/decisions/0013-drain-transaction.md).
        with returns.reading():
            query = OutboxRecord.select().where(OutboxRecord.message_id == body["message_id"])
            assert query.count() == 0

    wait(published)

    # Each listener's actor applied it in a worker process, from its RabbitMQ queue
    def counted() -> None:
        text = returns.worker_metrics()
        for listener in ("returns_view", "watcher", "archive"):
            applied = {"listener": listener, "outcome": "applied"}
            delta = metric(text, "cqrs_listener_messages_total", **applied) - metric(
                before, "cqrs_listener_messages_total", **applied
            )
            assert delta >= 1, listener
        actor = {"actor_name": "listener.returns_view"}
        assert (
            metric(text, "dramatiq_messages_total", **actor)
            - metric(before, "dramatiq_messages_total", **actor)
            >= 1
        )

    wait(counted)
    # The view's queue is bound on RabbitMQ, and every delivery was acked
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        queue = f"{returns.queue_prefix}returns_view"
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        connection.close()


def _one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def test_returns_add_up_and_each_read_shows_its_write(returns, sku):
    first = record_return(returns, sku, {"quantity": 2})
    second = record_return(returns, sku, {"quantity": MOST_PER_RETURN})
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert decode_token(second.json()["consistency_token"]) == (f"returns:{sku}", 2)
    token = second.json()["consistency_token"]
    assert returned(returns, sku, token) == {"sku": sku, "returned": 2 + MOST_PER_RETURN}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"quantity": 0}, id="quantity 0"),
        pytest.param({"quantity": -2}, id="quantity -2"),
        pytest.param({"quantity": "3"}, id="quantity a string"),
        pytest.param({}, id="quantity missing"),
        pytest.param({"quantity": 1, "note": "extra"}, id="another field"),
        pytest.param({"quantity": MOST_PER_RETURN + 1}, id="more than RETURNS_MOST_PER_RETURN"),
    ],
)
def test_a_bad_return_is_a_400_and_changes_nothing(returns, sku, body):
    response = record_return(returns, sku, body)

    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["title"] == "Invalid return."
    with returns.reading():
        assert ReturnCount.get_or_none(ReturnCount.sku == sku) is None
        assert not OutboxRecord.select().where(OutboxRecord.stream == f"returns:{sku}").exists()
    # A later, valid return of the same SKU is the first of its stream, and
    # once it is seen, anything the refused one had published would have been too.
    valid = record_return(returns, sku, {"quantity": 1})
    assert valid.status_code == 200, valid.text
    assert decode_token(valid.json()["consistency_token"]) == (f"returns:{sku}", 1)
    assert returned(returns, sku, valid.json()["consistency_token"])["returned"] == 1
    wait(lambda: _one(messages(returns, sku, PRODUCT_RETURNED)))
    with returns.reading():
        assert ReturnedQuantity.get(ReturnedQuantity.sku == sku).quantity == 1


def test_the_openapi_document_describes_the_returns_routes(returns):
    response = returns.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    item = document["paths"]["/returns/{sku}"]
    assert {"get", "post"} <= set(item)
    assert "400" in item["post"]["responses"]
    assert "/warehouse/products/{sku}/increase_quantity" in document["paths"]


def test_the_warehouses_commands_keep_working_beside_the_slice(returns, sku):
    increased = returns.increase(sku, 10)
    shipped = returns.ship(sku, 5)  # leaves 5: the notifier's command follows
    assert increased.status_code == shipped.status_code == 200, (increased.text, shipped.text)
    token = shipped.json()["consistency_token"]

    product = returns.get(f"/warehouse/products/{sku}", params={"after": token})
    assert product.status_code == 200, product.text
    assert product.json() == {"sku": sku, "quantity": 5}
    wait(
        lambda: _equal(
            sorted(m.type for m in messages(returns, sku)), sorted([INCREASED, SHIPPED, NOTIFIED])
        )
    )


def _equal(actual: Any, expected: Any) -> None:
    assert actual == expected


def test_routes_lint_passes_with_the_slices_schema_folder(returns):
    finished = returns.cli("routes", "lint")

    assert finished.returncode == 0, finished.output
    folders = [s.schemas for s in load_slices(returns.slices) if s.schemas is not None]
    assert len(folders) == 1  # the returns slice's
    events = sum(len(list(folder.rglob("*.avsc"))) for folder in [SCHEMAS, *folders])
    assert events > len(list(SCHEMAS.rglob("*.avsc")))
    # Every binding matches an event: returns_view's 'Returns.Events.#' too
    assert finished.stdout.strip() == (
        f"{events} events, {len(returns.listeners)} listeners: every event is received "
        "and every binding matches an event"
    )
    explained = returns.cli("routes", "explain", f"{PRODUCT_RETURNED}.v1")
    assert explained.returncode == 0, explained.output
    assert "returns_view: receives (binding 'Returns.Events.#')" in explained.stdout.splitlines()
