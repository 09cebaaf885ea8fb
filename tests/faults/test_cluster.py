"""Fault cases on a 3-node RabbitMQ cluster (tests/support/cluster.py), the
service on quorum queues (QUEUE_TYPE=quorum) with the three nodes' URLs in
BROKER_URL: a node killed and kept down, then brought back; a node stalled
(SIGSTOP, then SIGCONT); a rolling restart of all three. Each under a steady
command load, each ending with the suite's checks (tests/faults/checks.py).

Every process connects to the first node that answers, so node 1 holds every
connection, and it leads every queue (RabbitMQ puts a quorum queue's leader on
the node of the connection that declares it): the node these cases strike.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.cases import CLIENTS, CaseReportFactory, finish, skus_for
from tests.faults.conftest import StartInstallation
from tests.faults.installation import FaultInstallation
from tests.faults.load import Client, Load, plan
from tests.faults.report import CaseReport
from tests.support.cluster import Cluster, Node
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults

QUORUM = {"QUEUE_TYPE": "quorum"}
#: Seconds a node is stopped (SIGSTOP) for: less than RabbitMQ's net_ticktime (60 s),
#: so the cluster does not partition; the queues' other members elect new leaders.
STALL = 15.0


def on_cluster(start: StartInstallation, name: str, cluster: Cluster) -> FaultInstallation:
    return start(name, broker_url=cluster.url, settings=QUORUM)


def retrying_client(installation: FaultInstallation) -> Client:
    """A client that sends a command again after a 503: the API answers 503 only
    when PostgreSQL refuses it (a shared machine's connection limit, say), never
    for the broker, which commands do not talk to."""
    return Client(
        installation.base_url, retry_statuses=frozenset({503}), max_attempts=50, retry_pause=0.1
    )


def assert_commands_answered(report: CaseReport) -> None:
    """Every command attempt was answered 200, 400 or (PostgreSQL's) 503."""
    assert set(report.commands) <= {"accepted", "refused", "unavailable"}, report.commands


def steady_load(client: Client, skus: list[str], *, seed: int, pause: float = 0.1) -> Load:
    """The suite's clients sending commands, each pausing ``pause`` s between its
    commands, until ``stop_load``: a load that lasts through the whole fault."""
    return Load(client, plan(skus, 10_000, seed=seed), clients=CLIENTS, pause=pause).start()


def sent_more(load: Load, count: int, timeout: float = 120) -> None:
    """Until the load has sent ``count`` more commands than now."""
    wanted = load.done + count

    def sent() -> None:
        assert load.done >= wanted or load.failures, f"{load.done} of {wanted} commands sent"

    eventually(sent, timeout=timeout, interval=0.05)


def stop_load(load: Load) -> None:
    load.stop()
    assert not load.failures, load.failures


def leader_of_listener_queues(cluster: Cluster, installation: FaultInstallation) -> Node:
    members = cluster.queue_members(installation.queue_prefix)
    leaders = {members[installation.queue(name)][0] for name in installation.listener_names}
    assert len(leaders) == 1, f"the listener queues are led by {leaders}"
    return cluster.node_named(leaders.pop())


def assert_replicated(cluster: Cluster, installation: FaultInstallation) -> None:
    """Every listener queue is a quorum queue with its three replicas online
    (a classic queue lists no online members)."""
    everyone = {node.name for node in cluster.nodes}

    def replicated() -> None:
        members = cluster.queue_members(installation.queue_prefix)
        for name in installation.listener_names:
            assert members[installation.queue(name)][1] == everyone, members

    eventually(replicated, timeout=90, interval=0.5)


def test_a_killed_node_leading_the_listener_queues_loses_nothing_and_rejoins(
    start_installation: StartInstallation, cluster: Cluster, case_report: CaseReportFactory
) -> None:
    down = case_report(
        "cluster: leader killed",
        "SIGKILL of the node leading the listener queues (and holding every connection) "
        "under load; kept down: the load goes on and is checked on the other two nodes",
    )
    installation = on_cluster(start_installation, "cluster_kill", cluster)
    assert_replicated(cluster, installation)
    leader = leader_of_listener_queues(cluster, installation)
    skus = skus_for("ck")
    client = retrying_client(installation)
    load = steady_load(client, skus, seed=21)
    try:
        sent_more(load, 60)
        leader.kill()
        sent_more(load, 150)  # with the node down
    finally:
        stop_load(load)
    finish(installation, down, client, skus)
    assert_commands_answered(down)
    down.status = "passed"  # (the report's hook marks the test's last row only)
    members = cluster.queue_members(installation.queue_prefix)
    assert leader.name not in {lead for lead, _ in members.values()}, members

    back = case_report(
        "cluster: killed node back",
        "the killed node started again under load; it rejoins, its replicas catch up",
    )
    more = steady_load(client, skus, seed=22)
    try:
        sent_more(more, 60)
        cluster.restart(leader)
        sent_more(more, 60)
    finally:
        stop_load(more)
    cluster.wait_whole()
    assert_replicated(cluster, installation)
    finish(installation, back, client, skus)
    assert_commands_answered(back)


def test_a_stalled_node_loses_nothing(
    start_installation: StartInstallation, cluster: Cluster, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "cluster: node stalled",
        "SIGSTOP of the node leading the listener queues (and holding every connection) "
        f"for {STALL:g} s under load, then SIGCONT",
    )
    installation = on_cluster(start_installation, "cluster_stall", cluster)
    assert_replicated(cluster, installation)
    leader = leader_of_listener_queues(cluster, installation)
    skus = skus_for("cs")
    client = retrying_client(installation)
    load = steady_load(client, skus, seed=23)
    others = [node for node in cluster.nodes if node is not leader]
    try:
        sent_more(load, 60)
        leader.signal(signal.SIGSTOP)
        stopped_at, sent_before = time.monotonic(), load.done
        try:
            # (The CLI cannot list queues meanwhile: it asks every node.)
            def stalled_long_enough() -> None:
                assert time.monotonic() - stopped_at >= STALL, "still stalled"

            eventually(stalled_long_enough, timeout=STALL + 10, interval=0.2)
        finally:
            leader.signal(signal.SIGCONT)
        report.notes.append(f"commands sent while it was stopped: {load.done - sent_before}")
        sent_more(load, 60)
    finally:
        stop_load(load)
    assert all(node.running for node in others)
    cluster.wait_whole()
    assert_replicated(cluster, installation)
    # Where the leaders are now (noted, not asserted: when the others elect new
    # ones depends on how fast they notice, on a loaded machine).
    members = cluster.queue_members(installation.queue_prefix)
    leaders = sorted({members[installation.queue(name)][0] for name in installation.listener_names})
    report.notes.append(f"listener queues led afterwards by {', '.join(leaders)}")
    finish(installation, report, client, skus)
    assert_commands_answered(report)


def test_a_rolling_restart_of_every_node_under_load_loses_nothing(
    start_installation: StartInstallation, cluster: Cluster, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "cluster: rolling restart",
        "each node in turn stopped (rabbitmqctl stop) and started again under load, the "
        "next one once every listener queue has its three replicas online",
    )
    installation = on_cluster(start_installation, "cluster_roll", cluster)
    assert_replicated(cluster, installation)
    skus = skus_for("cr")
    client = retrying_client(installation)
    load = steady_load(client, skus, seed=24, pause=0.2)
    try:
        sent_more(load, 60)
        for node in cluster.nodes:
            cluster.stop(node)
            cluster.restart(node)
            cluster.wait_whole()
            assert_replicated(cluster, installation)
        sent_more(load, 60)
    finally:
        stop_load(load)
    finish(installation, report, client, skus)
    assert_commands_answered(report)
