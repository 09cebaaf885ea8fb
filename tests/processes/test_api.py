"""The API as gunicorn serves it: its OpenAPI document, and a chunked body over
the limit. (The rest of the HTTP surface: the database tier, under Falcon's
test client.)"""

from __future__ import annotations

import json

import pytest
import requests

from cqrs_warehouse.slices import load_slices
from cqrs_warehouse.web.openapi import document
from tests.processes.state import command_state

pytestmark = pytest.mark.processes


def test_the_document_is_served_at_openapi_json(ops):
    response = requests.get(ops.base_url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    served = response.json()
    assert served["openapi"].startswith("3.1")
    expected = document((s.name, s.openapi) for s in load_slices(ops.slices))
    assert served == json.loads(json.dumps(expected))


def test_a_chunked_body_over_the_limit_is_refused_through_gunicorn(ops, sku):
    # Without Content-Length (chunked transfer encoding) the limit cannot be
    # checked up front; such a body must still never be accepted. (Falcon
    # does not read a WSGI body of unknown length: it is refused as empty.)
    def chunks():
        yield b'{"quantity": 1'
        for _ in range(64):
            yield b" " * 1024
        yield b"}"

    response = requests.post(
        f"{ops.base_url}/warehouse/products/{sku}/increase_quantity",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code in (400, 411, 413), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert command_state(ops, [sku]) == {}
