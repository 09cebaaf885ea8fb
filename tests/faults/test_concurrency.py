"""Fault case: concurrent commands racing for the same stock, through gunicorn.

It ends with the same checks as every case (tests/faults/checks.py) and adds
a row to the report.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from cqrs_warehouse.warehouse.commands import ProductStock
from tests.faults.cases import CaseReportFactory, finish
from tests.faults.conftest import StartInstallation
from tests.faults.load import INSUFFICIENT, Client, Command
from tests.support.services import unique_name

pytestmark = pytest.mark.faults


def test_200_concurrent_shipments_of_1_against_100_on_hand_sell_exactly_100(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "200 shipments vs 100 on hand",
        "200 concurrent requests shipping 1 each against 100 on hand, through gunicorn with "
        "3 worker processes of 4 threads",
    )
    installation = start_installation("oversell", web_workers=3)
    sku = unique_name("oversell")
    client = Client(installation.base_url, timeout=60)
    assert client.send(Command(sku, "increase", 100)).status == 200
    start = threading.Barrier(200)

    def ship() -> None:
        start.wait(60)
        client.send(Command(sku, "ship", 1))

    threads = [threading.Thread(target=ship) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    shipments = [a for a in client.snapshot() if a.command.action == "ship"]
    assert len(shipments) == 200
    outcomes = Counter(a.status for a in shipments)
    assert outcomes == {200: 100, 400: 100}, outcomes
    titles = Counter(a.body.get("title") for a in shipments if a.status == 400)
    assert titles == {INSUFFICIENT: 100}, titles
    finish(installation, report, client, [sku])
    with installation.reading():
        assert ProductStock.get_by_id(sku).quantity == 0
    assert report.notifications == 6  # at 5, 4, 3, 2, 1 and 0
