"""Graceful shutdown under load, on the spare installation: SIGTERM to
gunicorn finishes the requests in flight, SIGTERM to the dramatiq workers
finishes the messages in hand; either way no accepted command's effect is
lost (the installation is running again when each test ends)."""

from __future__ import annotations

import http.client
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field

import pytest
import requests

from cqrs_warehouse.messaging.consistency import encode_token
from cqrs_warehouse.messaging.storage.models import StreamHead
from tests.processes.state import (
    command_state,
    outbox_size,
    view_state,
    wait,
    wait_until_view_matches_commands,
)
from tests.slices.recorders import WatchedMessage
from tests.support.installation import Installation
from tests.support.waiting import eventually

pytestmark = pytest.mark.processes


@dataclass
class Load:
    """Threads increasing their own SKU by 1 until told to stop."""

    installation: Installation
    skus: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    #: Stop at the first connection error once this is set.
    server_going: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for sku in self.skus:
            self.accepted[sku] = []
            thread = threading.Thread(target=self._run, args=(sku,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, sku: str) -> None:
        url = f"{self.installation.base_url}/warehouse/products/{sku}/increase_quantity"
        while not self.stop.is_set():
            try:
                response = requests.post(
                    url, json={"quantity": 1}, headers={"Connection": "close"}, timeout=40
                )
            except requests.RequestException as error:
                with self.lock:
                    self.other.append(f"{sku}: {error!r}")
                if self.server_going.is_set():
                    return
                continue
            with self.lock:
                if response.status_code == 200:
                    self.accepted[sku].append(response.json()["message_id"])
                else:
                    self.other.append(f"{sku}: {response.status_code} {response.text[:200]}")

    def count(self) -> int:
        with self.lock:
            return sum(len(ids) for ids in self.accepted.values())

    def wait_for(self, count: int, timeout: float = 60) -> None:
        def reached() -> None:
            if not any(t.is_alive() for t in self.threads):
                raise RuntimeError(f"every load thread stopped: {self.other[-5:]}")
            assert self.count() >= count, f"only {self.count()} commands accepted"

        eventually(reached, timeout=timeout, interval=0.05)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads)


def assert_every_accepted_command_applied(spare: Installation, load: Load) -> None:
    accepted = {mid for ids in load.accepted.values() for mid in ids}

    def applied() -> None:
        with spare.reading():
            watched = Counter(
                row.message_id
                for row in WatchedMessage.select(WatchedMessage.message_id).where(
                    WatchedMessage.message_id.in_(list(accepted))
                )
            )
        missing = accepted - set(watched)
        assert not missing, f"{len(missing)} accepted commands never reached the listeners"
        twice = {mid: n for mid, n in watched.items() if n > 1}
        assert not twice, f"applied more than once: {twice}"

    wait(applied, timeout=60)
    state = wait_until_view_matches_commands(spare, timeout=60)
    for sku, ids in load.accepted.items():
        # Every accepted increase (of 1) is in the command state and the view.
        assert state.get(sku, 0) >= len(ids), (sku, state.get(sku), len(ids))


def test_sigterm_to_gunicorn_finishes_the_requests_in_flight_and_loses_none(spare, sku):
    load = Load(spare, [f"{sku}-{n}" for n in range(6)])
    api = spare.current("gunicorn")
    load.start()
    try:
        load.wait_for(30)
        # A request that stays in flight for CONSISTENCY_TIMEOUT (3 s): it waits
        # for a write the command side has issued but that never comes.
        with spare.reading():
            StreamHead.insert(stream=f"{sku}-slow", routing_key="never", position=1).execute()
        slow = http.client.HTTPConnection("127.0.0.1", spare.port, timeout=40)
        token = encode_token(f"{sku}-slow", 1)
        slow.request("GET", f"/warehouse/products/{sku}-slow?after={token}")
        load.wait_for(load.count() + 12)  # later requests were served meanwhile
        load.server_going.set()
        api.process.send_signal(signal.SIGTERM)
        slow_response = slow.getresponse()
        slow_body = slow_response.read()
        exit_code = api.wait(40)
    finally:
        load.server_going.set()
        load.finish()
        if api.returncode() is not None:
            spare.start_api()
    assert exit_code == 0, api.output()
    assert slow_response.status == 503, slow_body
    assert b"Not consistent yet." in slow_body
    assert load.count() >= 42

    assert_every_accepted_command_applied(spare, load)
    # Read-your-writes through the new API, for the last write of each SKU
    for each in load.skus:
        quantity = command_state(spare, [each])[each]
        answer = spare.get(f"/warehouse/products/{each}")
        assert answer.json() == {"sku": each, "quantity": quantity}


def test_sigterm_to_the_workers_mid_load_loses_nothing(spare, sku):
    load = Load(spare, [f"{sku}-{n}" for n in range(4)])
    workers = spare.current("dramatiq")
    load.start()
    try:
        load.wait_for(40)

        def some_applied() -> None:
            assert sum(view_state(spare, load.skus).values()) >= 10

        wait(some_applied)
        exit_code = workers.terminate(timeout=60)
        # Commands are still accepted: their events wait in the outbox
        load.wait_for(load.count() + 20)
        waiting = outbox_size(spare)
    finally:
        load.finish()
        if workers.returncode() is not None:
            spare.start_workers()
    assert exit_code == 0, workers.output()  # it stopped by itself, in time
    assert waiting > 0
    assert_every_accepted_command_applied(spare, load)
