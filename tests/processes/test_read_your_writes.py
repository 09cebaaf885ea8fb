"""Read-your-writes across processes: the shared installation runs two
gunicorn workers and two dramatiq processes; every request opens a new
connection, so writes and reads land on whichever worker the kernel picks."""

from __future__ import annotations

import random
import threading

import pytest
import requests

from tests.support.installation import Installation
from tests.support.waiting import eventually

pytestmark = pytest.mark.processes


def read(ops: Installation, path: str, token: str, *, as_header: bool) -> requests.Response:
    """GET ``path`` with ``token``, as a client does: retried after its
    Retry-After while the worker it reached has as many reads waiting as
    CONSISTENCY_MAX_WAITING allows (three writers read at once here)."""
    if as_header:
        options = {"headers": {"X-Consistency-Token": token, "Connection": "close"}}
    else:
        options = {"params": {"after": token}, "headers": {"Connection": "close"}}
    answers: list[requests.Response] = []

    def answered() -> None:
        answers.append(requests.get(ops.base_url + path, timeout=15, **options))
        busy = answers[-1].status_code == 503 and "Too many waiting" in answers[-1].text
        assert not busy, "too many waiting reads: retry after Retry-After"

    eventually(answered, timeout=60, interval=1)  # (Retry-After: 1)
    return answers[-1]


def writer(ops: Installation, skus: list[str], seed: int, failures: list[str]) -> None:
    rng = random.Random(seed)
    totals = dict.fromkeys(skus, 0)
    for n in range(20):
        sku = rng.choice(skus)
        if totals[sku] >= 3 and rng.random() < 0.4:
            quantity = rng.randint(1, totals[sku])
            response = ops.ship(sku, quantity)
            expected = totals[sku] - quantity
        else:
            quantity = rng.randint(1, 50)
            response = ops.increase(sku, quantity)
            expected = totals[sku] + quantity
        if response.status_code != 200:
            failures.append(f"{sku}: command refused: {response.status_code} {response.text}")
            return
        totals[sku] = expected
        token = response.json()["consistency_token"]
        assert response.headers["X-Consistency-Token"] == token
        # Immediately read it back, alternating the token's two forms and the two reads
        if n % 3 == 2:
            answer = read(ops, "/warehouse/products", token, as_header=n % 2 == 0)
            seen = {p["sku"]: p["quantity"] for p in answer.json()} if answer.ok else {}
        else:
            answer = read(ops, f"/warehouse/products/{sku}", token, as_header=n % 2 == 0)
            seen = {sku: answer.json()["quantity"]} if answer.ok else {}
        if answer.status_code != 200 or seen.get(sku) != expected:
            failures.append(
                f"{sku} after write {n}: {answer.status_code} {answer.text[:200]}, "
                f"expected quantity {expected}"
            )


def test_a_read_with_the_token_of_a_write_always_shows_that_write(ops, sku):
    failures: list[str] = []
    threads = [
        threading.Thread(target=writer, args=(ops, [f"{sku}-{t}-a", f"{sku}-{t}-b"], t, failures))
        for t in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, "\n".join(failures)
