"""observability/: the alert rules pass ``promtool check rules`` and their unit
tests (``promtool test rules``), the scrape configuration ``promtool check
config``, and every metric the dashboard and the rules query is one the
service exports (the names its registries expose). promtool comes from
Debian's ``prometheus`` package (.ci/run installs it): missing, these fail."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from cqrs_warehouse.messaging.metrics import Metrics, StateCollector
from cqrs_warehouse.web.middleware import HttpMetrics
from tests.support.processes import ROOT

FOLDER = ROOT / "observability"
PROMETHEUS = FOLDER / "prometheus"
DASHBOARD = FOLDER / "grafana" / "dashboards" / "cqrs-warehouse.json"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_pass_promtool_and_their_unit_tests():
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")
    promtool("check", "config", "prometheus.yml")


def test_promtool_test_rules_fails_an_alert_that_does_not_fire_as_expected(tmp_path):
    """The unit tests can fail: with a threshold of an hour, the stuck outbox fires nothing."""
    rules = (PROMETHEUS / "alerts.yml").read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(rules.replace("> 60", "> 3600"), encoding="utf-8")
    (tmp_path / "alerts_test.yml").write_text(
        (PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    done = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "OutboxOldestMessageTooOld" in done.stdout + done.stderr


def test_every_alert_the_issue_names_is_there():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    names = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    assert names == {
        "OutboxOldestMessageTooOld",
        "ListenerLagGrowing",
        "NewDeadLetters",
        "ListenerWithoutConsumer",
    }


# --- metric names -------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "le", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers that are
    not functions, keywords, label names (in ``{}`` or ``by (...)``), strings
    or durations."""
    text = re.sub(r'"(\\.|[^"\\])*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    return {
        name
        for name, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", text)
        if not call and name.lower() not in _KEYWORDS and not re.fullmatch(r"\d.*", name)
    }


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exported() -> set[str]:
    """The series names the API's registries expose (the workers' cqrs_ counters
    are the same ``Metrics``)."""
    state = StateCollector(
        outbox_status=lambda: (1, 1.0),
        dead_letters=lambda: {"l": 1},
        queue_depths=lambda: {"l": (1, 1)},
    )
    registry = CollectorRegistry()
    registry.register(state)
    names = set()
    for source in (HttpMetrics().registry, Metrics().registry, registry):
        for family in source.collect():
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_count", "_sum"],
            }.get(family.type, [""])
            names |= {family.name + suffix for suffix in suffixes}
    return names


def test_the_parser_finds_the_names_and_only_them():
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{method="POST"}[5m]))) '
        "> 1 and max by (listener) (delta(b[10m])) > 0 or c == 0"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@pytest.mark.parametrize("expr", dashboard_expressions() + rule_expressions())
def test_every_metric_queried_is_one_the_service_exports(expr):
    names = metric_names(expr)
    assert names, expr
    assert names <= exported(), sorted(names - exported())


def test_the_dashboard_shows_what_the_issue_asks_for():
    queried = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert {
        "cqrs_commands_total",
        "cqrs_http_request_duration_seconds_bucket",
        "cqrs_outbox_depth",
        "cqrs_outbox_oldest_age_seconds",
        "cqrs_listener_messages_total",
        "cqrs_listener_lag_messages",
        "cqrs_dead_letters",
        "cqrs_consistent_reads_total",
    } <= queried
