"""GET /livez and GET /readyz through the running installation, when
everything is up. (With a part down: the database tier's tests of the app.)"""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.processes


def test_livez_answers_200_while_the_process_is_up(ops):
    response = requests.get(ops.base_url + "/livez", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readyz_answers_200_when_the_database_and_the_broker_answer(ops):
    response = requests.get(ops.base_url + "/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": ["broker", "database"]}
