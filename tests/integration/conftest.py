"""The integration tests' shared fixture: ``installations`` (see test_rabbitmq_drain)."""

from tests.integration.test_rabbitmq_drain import installations  # noqa: F401
