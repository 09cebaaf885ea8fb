"""Settings from the environment (the core's and the warehouse's), URL
redaction, and the runtime's refusal to run the API or workers without a broker."""

import dataclasses

import pytest
import yaml
from dramatiq.common import dq_name, xq_name

from cqrs_warehouse.messaging.errors import ConfigurationError, RoutingConfigError
from cqrs_warehouse.messaging.routing import load_routing
from cqrs_warehouse.runtime import build
from cqrs_warehouse.settings import DEFAULT_DATABASE_URL, Settings, read_settings, redact_url
from cqrs_warehouse.warehouse.settings import WarehouseSettings

ENV_KEYS = (
    "DATABASE_URL",
    "BROKER_URL",
    "LISTENERS_CONFIG",
    "SCHEMAS_DIR",
    "QUEUE_PREFIX",
    "LOW_QUANTITY_THRESHOLD",
    "OUTBOX_SWEEP_INTERVAL",
    "OUTBOX_BATCH_SIZE",
)


def test_defaults_are_a_sqlite_file_no_broker_and_the_repositorys_listeners_yaml():
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_url.startswith("sqlite:///")
    assert not settings.database_url.endswith(":memory:")
    assert settings.broker_url is None
    assert settings.listeners_config == "config/listeners.yaml"
    assert settings.schemas_dir == "schemas"
    assert settings.queue_prefix == ""
    assert settings.queue_type == "classic"
    assert read_settings(WarehouseSettings, {}).low_quantity_threshold == 5
    assert settings.sweep_interval == 2.0
    assert settings.drain_batch_size == 500
    assert settings.database_connect_timeout == 5
    assert settings.database_statement_timeout == 30.0
    assert settings.database_lock_timeout == 10.0


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example/warehouse")
    monkeypatch.setenv("QUEUE_PREFIX", "staging_")
    settings = Settings.from_env()
    assert settings.database_url == "postgresql://app@db.example/warehouse"
    assert settings.queue_prefix == "staging_"
    assert settings.broker_url is None


@pytest.mark.parametrize(
    ("key", "raw", "attribute", "value"),
    [
        ("DATABASE_URL", "postgresql://u:p@h:5432/d", "database_url", "postgresql://u:p@h:5432/d"),
        ("DATABASE_URL", "sqlite:////var/lib/w.db", "database_url", "sqlite:////var/lib/w.db"),
        (
            "BROKER_URL",
            "amqp://guest:guest@rabbit:5672/",
            "broker_url",
            "amqp://guest:guest@rabbit:5672/",
        ),
        ("BROKER_URL", "amqps://u:p@rabbit/vhost", "broker_url", "amqps://u:p@rabbit/vhost"),
        (
            "LISTENERS_CONFIG",
            "/etc/cw/listeners.yaml",
            "listeners_config",
            "/etc/cw/listeners.yaml",
        ),
        (
            "BROKER_URL",
            "amqp://u:p@r1:5672/; amqp://u:p@r2:5672/;amqp://u:p@r3:5672/",
            "broker_url",
            "amqp://u:p@r1:5672/;amqp://u:p@r2:5672/;amqp://u:p@r3:5672/",
        ),
        ("QUEUE_TYPE", "classic", "queue_type", "classic"),
        ("QUEUE_TYPE", "quorum", "queue_type", "quorum"),
        ("SCHEMAS_DIR", "/srv/schemas", "schemas_dir", "/srv/schemas"),
        ("QUEUE_PREFIX", "test_", "queue_prefix", "test_"),
        ("QUEUE_PREFIX", "_a.b-c9", "queue_prefix", "_a.b-c9"),
        ("QUEUE_PREFIX", "p" * 55, "queue_prefix", "p" * 55),
        ("LOW_QUANTITY_THRESHOLD", "0", "low_quantity_threshold", 0),
        ("LOW_QUANTITY_THRESHOLD", "12", "low_quantity_threshold", 12),
        ("OUTBOX_SWEEP_INTERVAL", "0.5", "sweep_interval", 0.5),
        ("OUTBOX_BATCH_SIZE", "10", "drain_batch_size", 10),
        ("DATABASE_CONNECT_TIMEOUT", "2", "database_connect_timeout", 2),
        ("DATABASE_STATEMENT_TIMEOUT", "0", "database_statement_timeout", 0.0),
        ("DATABASE_STATEMENT_TIMEOUT", "2.5", "database_statement_timeout", 2.5),
        ("DATABASE_LOCK_TIMEOUT", "0", "database_lock_timeout", 0.0),
    ],
)
def test_from_env_reads_each_variable(key, raw, attribute, value):
    assert getattr(_read({key: raw}, attribute), attribute) == value


def _read(environ, attribute):
    """From ``environ``, the settings holding ``attribute``: the core's or the warehouse's."""
    if attribute in {field.name for field in dataclasses.fields(WarehouseSettings)}:
        return read_settings(WarehouseSettings, environ)
    return Settings.from_env(environ)


@pytest.mark.parametrize(
    ("key", "attribute"),
    [
        ("DATABASE_URL", "database_url"),
        ("BROKER_URL", "broker_url"),
        ("LISTENERS_CONFIG", "listeners_config"),
        ("LOW_QUANTITY_THRESHOLD", "low_quantity_threshold"),
        ("OUTBOX_BATCH_SIZE", "drain_batch_size"),
    ],
)
def test_empty_variable_means_the_default(key, attribute):
    default = WarehouseSettings() if attribute == "low_quantity_threshold" else Settings()
    assert getattr(_read({key: ""}, attribute), attribute) == getattr(default, attribute)


@pytest.mark.parametrize(
    "prefix",
    ["1abc", "has space", "a/b", "a:b", "-a", ".a", "caf\u00e9", "a\n"],
    ids=[
        "digit-first",
        "space",
        "slash",
        "colon",
        "dash-first",
        "dot-first",
        "non-ascii",
        "newline",
    ],
)
def test_invalid_queue_prefix_is_refused(prefix):
    with pytest.raises(ConfigurationError, match="QUEUE_PREFIX"):
        Settings.from_env({"QUEUE_PREFIX": prefix})


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "http://rabbit:15672/", "rabbit:5672", "AMQP-ish", "localhost"],
)
def test_broker_url_that_is_not_amqp_is_refused(url):
    with pytest.raises(ConfigurationError, match="BROKER_URL"):
        Settings.from_env({"BROKER_URL": url})


def test_refused_broker_url_does_not_leak_its_password():
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"BROKER_URL": "redis://user:s3cret-pw@host:6379/0"})
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("LOW_QUANTITY_THRESHOLD", "-1"),
        ("LOW_QUANTITY_THRESHOLD", "five"),
        ("LOW_QUANTITY_THRESHOLD", "1.5"),
        ("OUTBOX_BATCH_SIZE", "0"),
        ("OUTBOX_BATCH_SIZE", "many"),
        ("OUTBOX_SWEEP_INTERVAL", "0"),
        ("OUTBOX_SWEEP_INTERVAL", "soon"),
        ("OUTBOX_SWEEP_INTERVAL", "nan"),
        ("OUTBOX_SWEEP_INTERVAL", "inf"),
        ("DATABASE_CONNECT_TIMEOUT", "1"),  # libpq waits 2 s at least
        ("DATABASE_CONNECT_TIMEOUT", "2.5"),
        ("DATABASE_STATEMENT_TIMEOUT", "-1"),
        ("DATABASE_LOCK_TIMEOUT", "never"),
    ],
)
def test_invalid_number_is_refused_naming_the_variable(key, raw):
    settings_class = WarehouseSettings if key == "LOW_QUANTITY_THRESHOLD" else Settings
    with pytest.raises(ConfigurationError, match=key):
        read_settings(settings_class, {key: raw})


@pytest.mark.parametrize(
    ("length", "limits"),
    [
        (56, ["AMQP exchange names"]),
        (57, ["NOTIFY channel names", "AMQP exchange names"]),
        (153, ["NOTIFY channel names", "AMQP exchange names", "AMQP queue names"]),
    ],
)
def test_a_queue_prefix_too_long_for_a_name_it_prefixes_is_refused_naming_the_limit(length, limits):
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"QUEUE_PREFIX": "p" * length})
    message = str(caught.value)
    assert message.startswith(f"QUEUE_PREFIX is {length} characters, too long: ")
    for limit in limits:
        assert limit in message
    assert message.count("are at most") == len(limits)


def test_the_longest_queue_prefix_fits_every_name_it_prefixes(tmp_path):
    """With the longest prefix accepted and the longest names listeners.yaml
    accepts, every name fits its limit; one character more in either is refused."""
    settings = Settings.from_env({"QUEUE_PREFIX": "p" * 55})
    exchange, listener = "e" * 200, "l" * 100
    path = tmp_path / "listeners.yaml"
    entry = {
        "name": listener,
        "handler": "tests.slices.recorders.listeners:watch",
        "bindings": ["#"],
    }
    for name_of_exchange, name_of_listener, accepted in [
        (exchange, listener, True),
        (exchange + "e", listener, False),
        (exchange, listener + "l", False),
    ]:
        document = {
            "exchange": {"name": name_of_exchange},
            "listeners": [{**entry, "name": name_of_listener}],
        }
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        if accepted:
            load_routing(path)
        else:
            with pytest.raises(RoutingConfigError):
                load_routing(path)
    assert len(settings.notify_channel.encode()) <= 63
    assert len(settings.applied_channel.encode()) <= 63
    assert len(settings.prefixed(exchange).encode()) <= 255
    for queue in (settings.prefixed(listener), settings.prefixed("outbox_drain")):
        assert len(dq_name(queue).encode()) <= 255
        assert len(xq_name(queue).encode()) <= 255


def test_queue_names_and_notify_channel_carry_the_prefix():
    settings = Settings.from_env({"QUEUE_PREFIX": "ci_"})
    assert settings.prefixed("products_view") == "ci_products_view"
    assert settings.notify_channel == "ci_outbox"
    assert Settings().prefixed("products_view") == "products_view"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:secret@rabbit:5672/", "amqp://guest:***@rabbit:5672/"),
        ("amqps://user:p%40ss@rabbit/vhost", "amqps://user:***@rabbit/vhost"),
        ("postgresql://app:hunter2@db:5432/warehouse", "postgresql://app:***@db:5432/warehouse"),
        ("postgresql://app:a:b:c@db/warehouse", "postgresql://app:***@db/warehouse"),
        ("amqp://:secret@rabbit/", "amqp://:***@rabbit/"),
    ],
)
def test_redact_url_hides_the_password(url, redacted):
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    [
        "amqp://rabbit:5672/",
        "amqp://guest@rabbit:5672/",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "sqlite:///cqrs-warehouse.db",
        "sqlite:////tmp/a:b@c.db",
    ],
)
def test_redact_url_leaves_a_url_without_password_unchanged(url):
    assert redact_url(url) == url


def test_build_without_broker_url_refuses_to_run_the_api_or_workers():
    settings = Settings(database_url="sqlite:///:memory:", broker_url=None)
    with pytest.raises(ConfigurationError, match="BROKER_URL"):
        build(settings)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://a/;", "empty URL"),
        ("amqp://a/;;amqp://b/", "empty URL"),
        ("amqp://a/;redis://b/", "'redis://b/' is not an amqp"),
        ("amqp://u:secret@a/;http://u:secret@b/", "'http://u:\\*\\*\\*@b/'"),
    ],
)
def test_broker_urls_of_a_cluster_are_each_checked(url, says):
    with pytest.raises(ConfigurationError, match=f"BROKER_URL.*{says}") as refused:
        Settings.from_env({"BROKER_URL": url})
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("raw", ["Quorum", "stream", "mirrored", " classic"])
def test_a_queue_type_other_than_classic_or_quorum_is_refused(raw):
    with pytest.raises(ConfigurationError, match=r"QUEUE_TYPE=.*classic, quorum"):
        Settings.from_env({"QUEUE_TYPE": raw})
