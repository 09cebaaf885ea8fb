"""``Routes.apply`` against RabbitMQ's own view (``rabbitmqctl``): an exchange
renamed in listeners.yaml leaves no binding on the old one, a queue deleted by
hand does not stop the apply, and a removed listener's queue is a leftover."""

from __future__ import annotations

from cqrs_warehouse.runtime import build
from cqrs_warehouse.settings import Settings
from tests.broker.conftest import LISTENERS, WATCH
from tests.support import rabbitmqctl
from tests.support.installation import write_listeners_config
from tests.support.services import delete_from_broker


def test_apply_follows_a_renamed_exchange_a_queue_deleted_by_hand_and_a_removed_listener(
    on_rabbitmq,
):
    installed = on_rabbitmq()
    prefix = installed.prefix
    with installed.runtime.database.connection_context():
        first = installed.runtime.routes.apply()
    assert {(q, b) for q, _, b in first.bound} == {
        (f"{prefix}{name}", b) for name, bindings in LISTENERS.items() for b in bindings
    }
    assert rabbitmqctl.bindings(f"{prefix}messaging") == {
        f"{prefix}{name}": set(bindings) for name, bindings in LISTENERS.items()
    }

    delete_from_broker([f"{prefix}elsewhere"])  # by hand: unbinding it finds no queue
    kept = {n: b for n, b in LISTENERS.items() if n != "elsewhere"}
    config = write_listeners_config(
        installed.installation.workdir / "renamed.yaml",
        [{"name": n, "handler": WATCH, "bindings": b} for n, b in kept.items()],
        exchange="messaging_v2",
    )
    renamed = build(
        Settings.from_env({**installed.installation.env, "LISTENERS_CONFIG": str(config)})
    )
    try:
        with renamed.database.connection_context():
            changes = renamed.routes.apply()
            listed, leftovers = renamed.routes.status()
        on_new_exchange = rabbitmqctl.bindings(f"{prefix}messaging_v2")
    finally:
        renamed.transport.broker.close()
        delete_from_broker([], [f"{prefix}messaging_v2"])
    assert {q for q, _, _ in changes.unbound} == {f"{prefix}{name}" for name in LISTENERS}
    assert changes.leftovers == [f"{prefix}elsewhere"]
    assert f"{prefix}messaging" not in {e for _, e, _ in changes.bound}
    assert on_new_exchange == {f"{prefix}{name}": set(bindings) for name, bindings in kept.items()}
    assert [q.queue for q in leftovers] == [f"{prefix}elsewhere"]
    assert leftovers[0].declared == () and leftovers[0].messages is None  # not on the broker
    assert all(q.declared == q.in_file for q in listed)
    assert rabbitmqctl.bindings(f"{prefix}messaging") == {}
