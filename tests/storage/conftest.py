"""Storage fixtures: every test runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from parley.storage.db import Database
from parley.storage.repos import Repos
from tests.pg import PgServer
from tests.pg_fixtures import shared_pg_server

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # Same shared server as the plugin's fixture, so this directory also runs without the plugin.
    with shared_pg_server() as srv:
        yield srv


def _db_name(request: pytest.FixtureRequest) -> str:
    # PostgreSQL folds and truncates identifiers at 63 bytes; a counter keeps names unique.
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"t{next(_names)}_{stem}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/parley.db"
        return
    pg: PgServer = request.getfixturevalue("pg_server")
    name = _db_name(request)
    url = pg.fresh_database(name)
    yield url
    pg.drop_database(name)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database on ``db_url``."""
    database = Database(db_url)
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
def repos(db: Database) -> Repos:
    return Repos(db)
