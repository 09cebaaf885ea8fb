"""How each way of starting the service reacts to a broken configuration: a
malformed listeners.yaml or a missing BROKER_URL stops it with a non-zero
exit and an error that says what is wrong, before it serves anything.
(`cqrs-warehouse serve` without BROKER_URL runs: test_serve_embedded.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.environment import service_env
from tests.support.installation import GUNICORN_CONF, project_listeners, write_listeners_config
from tests.support.processes import BIN, free_port, run_to_exit
from tests.support.services import BROKER_URL

pytestmark = pytest.mark.processes

STARTUP_TIMEOUT = 60


def gunicorn(port: int) -> list[str]:
    return [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}"]


def dramatiq() -> list[str]:
    return [str(BIN / "dramatiq"), "cqrs_warehouse.worker", "-p", "2", "-t", "4"]


def serve(port: int) -> list[str]:
    return [str(BIN / "cqrs-warehouse"), "serve", "--bind", f"127.0.0.1:{port}"]


COMMANDS = {
    "gunicorn": lambda: gunicorn(free_port()),
    "dramatiq": dramatiq,
    "cqrs-warehouse serve": lambda: serve(free_port()),
}


def duplicate_name(path: Path) -> tuple[Path, str]:
    listeners = project_listeners()
    listeners[1]["name"] = listeners[0]["name"]
    return write_listeners_config(path, listeners), "duplicate listener name"


def unimportable_handler(path: Path) -> tuple[Path, str]:
    listeners = project_listeners()
    listeners[1]["handler"] = "tests.processes.no_such_module:handle_message"
    return write_listeners_config(path, listeners), "cannot be imported"


def bindings_matching_no_event(path: Path) -> tuple[Path, str]:
    listeners = project_listeners()
    listeners[1]["bindings"] = ["Warehouse.Event.#", "Billing.*.v1"]  # typo, another domain
    return write_listeners_config(path, listeners), "match no known event type"


MALFORMED = [
    pytest.param(duplicate_name, id="duplicate listener name"),
    pytest.param(unimportable_handler, id="handler that cannot be imported"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("malformed", MALFORMED)
def test_a_malformed_listeners_yaml_stops_start_up_with_an_error_naming_the_file_and_entry(
    tmp_path: Path, command: str, malformed
) -> None:
    check_start_up_refused(tmp_path, command, malformed)


@pytest.mark.parametrize("command", ["dramatiq", "cqrs-warehouse serve"])
def test_a_listener_whose_bindings_match_no_known_event_stops_the_workers(
    tmp_path: Path, command: str
) -> None:
    check_start_up_refused(tmp_path, command, bindings_matching_no_event)


def check_start_up_refused(tmp_path: Path, command: str, malformed) -> None:
    config, problem = malformed(tmp_path / "listeners.yaml")
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        BROKER_URL=BROKER_URL,
        LISTENERS_CONFIG=str(config),
        WEB_CONCURRENCY="2",
    )

    finished = run_to_exit(COMMANDS[command](), env=env, cwd=tmp_path, timeout=STARTUP_TIMEOUT)

    assert finished.returncode != 0, finished.output
    clear_lines = [
        line
        for line in finished.output.splitlines()
        if str(config) in line and "listeners[1]" in line and problem in line
    ]
    assert clear_lines, f"no line names {config}, listeners[1] and {problem!r}:\n{finished.output}"


@pytest.mark.parametrize("command", ["gunicorn", "dramatiq"])
def test_the_api_and_the_workers_refuse_to_start_without_broker_url(
    tmp_path: Path, command: str
) -> None:
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        BROKER_URL=None,
        LISTENERS_CONFIG=str(write_listeners_config(tmp_path / "l.yaml", project_listeners())),
        WEB_CONCURRENCY="2",
    )

    finished = run_to_exit(COMMANDS[command](), env=env, cwd=tmp_path, timeout=STARTUP_TIMEOUT)

    assert finished.returncode != 0, finished.output
    assert "BROKER_URL is not set" in finished.output, finished.output


@pytest.mark.parametrize("command", ["gunicorn", "cqrs-warehouse serve"])
def test_the_api_refuses_to_let_waiting_reads_take_every_thread(
    tmp_path: Path, command: str
) -> None:
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        BROKER_URL=BROKER_URL if command == "gunicorn" else None,
        LISTENERS_CONFIG=str(write_listeners_config(tmp_path / "l.yaml", project_listeners())),
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="4",
        CONSISTENCY_MAX_WAITING="4" if command == "gunicorn" else "8",  # serve: 8 threads
    )

    finished = run_to_exit(COMMANDS[command](), env=env, cwd=tmp_path, timeout=STARTUP_TIMEOUT)

    assert finished.returncode == 2, finished.output
    assert "CONSISTENCY_MAX_WAITING=" in finished.output
    assert "must be below" in finished.output
