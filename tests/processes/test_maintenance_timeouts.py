"""`cqrs-warehouse` commands are maintenance: they run without the statement
and lock timeouts (DATABASE_*_TIMEOUT) that bound the API and the workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.storage.database import open_database
from cqrs_warehouse.messaging.storage.models import qualified_name
from tests.db.test_database_timeouts import waiting_on_a_lock
from tests.processes.state import wait
from tests.support.installation import Installation, project_listeners
from tests.support.processes import BIN

pytestmark = pytest.mark.processes


def test_archive_prune_waits_for_a_locked_archive_past_the_timeouts(postgres, tmp_path: Path):
    installation = Installation.create(postgres, tmp_path, listeners=project_listeners())
    holder = open_database(installation.database_url)  # no timeouts
    try:
        with installation.reading():
            archive = qualified_name(ArchivedMessage)
        with holder.atomic():
            holder.execute_sql(f"LOCK TABLE {archive} IN ACCESS EXCLUSIVE MODE")
            prune = installation.start(
                "cli",
                [str(BIN / "cqrs-warehouse"), "archive", "prune", "--older-than", "0"],
                {"DATABASE_STATEMENT_TIMEOUT": "0.1", "DATABASE_LOCK_TIMEOUT": "0.1"},
            )
            observer = open_database(installation.database_url)
            try:
                # Waiting longer than both timeouts, and still waiting.
                wait(lambda: waiting_on_a_lock(observer, "relation", 0.5))
            finally:
                observer.close()
        assert prune.wait(60) == 0, prune.output()
        assert "pruned 0 archived messages" in prune.output()
    finally:
        holder.close()
        installation.close()
