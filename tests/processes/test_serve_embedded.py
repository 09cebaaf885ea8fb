"""`cqrs-warehouse serve` with nothing configured: a SQLite file in the working
directory and the in-process broker, everything in one process."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import requests

from cqrs_warehouse.settings import DEFAULT_DATABASE_URL
from tests.processes.state import wait
from tests.support.environment import service_env
from tests.support.installation import project_listeners, write_listeners_config
from tests.support.processes import BIN, Service, free_port
from tests.support.waiting import wait_for_http

pytestmark = pytest.mark.processes

SQLITE_FILE = DEFAULT_DATABASE_URL.removeprefix("sqlite:///")


def serve(port: int) -> list[str]:
    return [str(BIN / "cqrs-warehouse"), "serve", "--bind", f"127.0.0.1:{port}"]


def test_serve_without_urls_keeps_its_state_in_a_sqlite_file_and_stops_cleanly_on_sigterm(
    tmp_path: Path, sku: str
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    config = write_listeners_config(tmp_path / "listeners.yaml", project_listeners())
    env = service_env(DATABASE_URL=None, BROKER_URL=None, LISTENERS_CONFIG=str(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    assert not (workdir / SQLITE_FILE).exists()

    service = Service.start("serve", serve(port), env=env, cwd=workdir, log_dir=tmp_path)
    try:
        first = wait_for_http(f"{base}/warehouse/products", [service])
        assert first.json() == []

        for action, quantity in (("increase_quantity", 10), ("ship_quantity", 6)):
            response = requests.post(
                f"{base}/warehouse/products/{sku}/{action}", json={"quantity": quantity}, timeout=10
            )
            assert response.status_code == 200, response.text

        def view_shows_four() -> None:
            response = requests.get(f"{base}/warehouse/products", timeout=10)
            assert response.json() == [{"sku": sku, "quantity": 4}]

        wait(view_shows_four)

        database_file = workdir / SQLITE_FILE
        assert database_file.is_file()
        with closing(sqlite3.connect(f"file:{database_file}?mode=ro", uri=True)) as connection:
            rows = connection.execute(
                "SELECT sku, quantity FROM products_view_products WHERE sku = ?", (sku,)
            ).fetchall()
        assert rows == [(sku, 4)]

        service.process.terminate()  # SIGTERM
        assert service.wait(timeout=30) == 0, service.output()
    finally:
        service.terminate()


def test_serve_runs_without_broker_url_on_the_in_process_broker(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(
        DATABASE_URL=None,
        BROKER_URL=None,
        LISTENERS_CONFIG=str(write_listeners_config(tmp_path / "l.yaml", project_listeners())),
    )
    service = Service.start("serve", serve(port), env=env, cwd=tmp_path, log_dir=tmp_path)
    try:
        response = wait_for_http(f"http://127.0.0.1:{port}/warehouse/products", [service])
        assert response.json() == []
        assert service.returncode() is None
    finally:
        service.terminate()
