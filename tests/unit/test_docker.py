"""The Docker image and compose set-up, checked where no image can be built:
what the files say, and the entrypoint run as a script."""

from __future__ import annotations

import json
import os
import re
import subprocess

import yaml
from dramatiq.common import dq_name, xq_name

from cqrs_warehouse.messaging.routing import load_routing
from cqrs_warehouse.settings import Settings
from tests.support.processes import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
DEFINITIONS = json.loads((ROOT / "docker" / "rabbitmq" / "definitions.json").read_text("utf-8"))
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
PINNED = re.compile(r":v?\d+\.\d+(\.\d+)?(-[a-z0-9-]+)?$")  # a version's tag, not "3-..."


def test_base_images_are_pinned_by_version_tag():
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    images = [s["image"] for s in COMPOSE["services"].values() if "build" not in s]
    assert bases and images
    for image in [*bases, *images]:
        assert PINNED.search(image), image


def test_the_image_runs_as_a_user_that_owns_nothing_it_runs():
    assert "USER app" in DOCKERFILE
    assert "--chown" not in DOCKERFILE  # config/, schemas/, gunicorn.conf.py stay root's
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD ", DOCKERFILE, re.MULTILINE)
    assert 'ENTRYPOINT ["cqrs-warehouse-entrypoint"]' in DOCKERFILE
    assert "COPY docker/entrypoint.sh /usr/local/bin/cqrs-warehouse-entrypoint" in DOCKERFILE


def run_entrypoint(env: dict[str, str], tmp_path) -> dict[str, str]:
    """The environment the entrypoint hands its command."""
    environment = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), **env}
    output = subprocess.run(
        ["sh", str(ENTRYPOINT), "env"], env=environment, capture_output=True, check=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_the_entrypoint_gives_each_start_a_private_metrics_folder_of_its_own(tmp_path):
    first = run_entrypoint({}, tmp_path)["dramatiq_prom_db"]
    second = run_entrypoint({}, tmp_path)["dramatiq_prom_db"]
    assert first != second  # unpredictable, fresh at each start
    for folder in (first, second):
        assert folder.startswith(f"{tmp_path}/cqrs-warehouse-metrics.")
        assert os.stat(folder).st_mode & 0o777 == 0o700
        assert os.listdir(folder) == []
    # One the operator gives stays theirs (worker_setup never removes it then).
    assert run_entrypoint({"dramatiq_prom_db": "/srv/m"}, tmp_path)["dramatiq_prom_db"] == "/srv/m"


def test_compose_keeps_secrets_in_the_env_file_and_restarts_the_services():
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    placeholders = dict(re.findall(r"^(\w+)=(.*)$", example, re.MULTILINE))
    used = set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT))
    assert used == set(placeholders)  # every secret compose needs, and only those
    assert all(value == "" for value in placeholders.values())  # compose refuses them empty
    assert not re.search(r"(PASSWORD|PASS|TOKEN): (?!\$\{)", COMPOSE_TEXT)  # none written here
    assert re.search(r"^\.env$", (ROOT / ".gitignore").read_text(), re.MULTILINE)
    assert re.search(r"^\.env$", (ROOT / ".dockerignore").read_text(), re.MULTILINE)
    for name, service in COMPOSE["services"].items():
        expected = "no" if name == "migrate" else "unless-stopped"
        assert service.get("restart") == expected, name


def test_compose_publishes_no_management_ui_and_nothing_beyond_this_machine():
    services = COMPOSE["services"]
    assert "ports" not in services["rabbitmq"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    management = yaml.safe_load((ROOT / "docker-compose.management.yml").read_text("utf-8"))
    assert management["services"]["rabbitmq"]["ports"] == ["127.0.0.1:15672:15672"]


def permissions_of(user: str) -> list[dict[str, str]]:
    return [p for p in DEFINITIONS["permissions"] if p["user"] == user]


def test_the_application_user_may_use_the_services_names_only():
    settings = Settings.from_env(
        {"QUEUE_PREFIX": COMPOSE["x-service-env"]["QUEUE_PREFIX"]}
    )  # refused here if compose's prefix were invalid
    routing = load_routing(ROOT / "config" / "listeners.yaml", build=lambda handler: handler)
    queues = [settings.prefixed(s.name) for s in routing.listeners]
    queues.append(settings.prefixed("outbox_drain"))
    own = [settings.prefixed(routing.exchange.name)]
    own += [name for queue in queues for name in (queue, dq_name(queue), xq_name(queue))]

    app = next(u for u in DEFINITIONS["users"] if u["name"] == "warehouse")
    assert app["tags"] == []  # no administrator, no management UI
    assert "/warehouse" in COMPOSE["x-service-env"]["BROKER_URL"]
    [permission] = permissions_of("warehouse")
    assert permission["vhost"] == "warehouse"
    for kind in ("configure", "write", "read"):
        allowed = re.compile(permission[kind])
        for name in own:
            assert allowed.search(name), (kind, name)
        assert not allowed.search("other_queue"), kind
    # Dramatiq publishes to its queues (and dead-letters) through the default exchange.
    assert re.search(permission["write"], "amq.default")
    assert not re.search(permission["configure"], "amq.default")


def test_the_broker_loads_its_definitions_at_boot_and_so_creates_no_guest():
    conf = (ROOT / "docker" / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf
    assert {u["name"] for u in DEFINITIONS["users"]} == {"warehouse", "admin"}
    for user in DEFINITIONS["users"]:  # rendered from .env at start (docker/rabbitmq/start.sh)
        assert re.fullmatch(r"@RABBITMQ_\w+_PASSWORD@", user["password"])
    start = (ROOT / "docker" / "rabbitmq" / "start.sh").read_text(encoding="utf-8")
    for user in DEFINITIONS["users"]:
        assert user["password"] in start


def test_the_broker_refuses_to_start_without_usable_passwords():
    start = ROOT / "docker" / "rabbitmq" / "start.sh"
    for app, admin in [("", "b2"), ("a-1", "b2"), ("a1", "b 2")]:
        env = {"PATH": os.environ["PATH"], "RABBITMQ_APP_PASSWORD": app}
        env["RABBITMQ_ADMIN_PASSWORD"] = admin
        done = subprocess.run(["sh", str(start)], env=env, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert "must be set in .env, to letters and digits only" in done.stderr
