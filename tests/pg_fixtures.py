"""The session's PostgreSQL server as a pytest fixture, for every test directory.

Registered as a plugin so that tests/storage and tests/e2e share one server process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.pg import PgServer, PgStartFailed, PgUnavailable, start_server

SKIP_ENV = "PARLEY_SKIP_PG"

_server: PgServer | None = None
_holders = 0
# A failed start is remembered so a second fixture definition does not retry it.
_failure: str | None = None


@contextmanager
def shared_pg_server() -> Iterator[PgServer]:
    """The one server of the session, started on first use, stopped when its last user is done."""
    global _server, _holders, _failure
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL tests skipped ({SKIP_ENV}=1)")
    if _failure is not None:
        pytest.fail(_failure, pytrace=False)
    if _server is None:
        try:
            _server = start_server()
            # Should the session die before fixture teardown, the server still goes at exit.
            atexit.register(_server.stop)
        except PgUnavailable as e:
            _failure = str(e)
        except PgStartFailed as e:
            _failure = f"could not start a throwaway PostgreSQL server: {e}"
        if _failure is not None:
            pytest.fail(_failure, pytrace=False)
    srv = _server
    assert srv is not None
    _holders += 1
    try:
        yield srv
    finally:
        _holders -= 1
        if _holders == 0 and _server is not None:
            _server.stop()
            _server = None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A running PostgreSQL server; ``pg_server.url`` is its empty ``parley`` database."""
    with shared_pg_server() as srv:
        yield srv
