"""The database: an async SQLAlchemy engine on SQLite or PostgreSQL, and migrations."""

from __future__ import annotations

from collections import namedtuple
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


class StorageUnavailable(Exception):
    """The database cannot be reached or used."""


def async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://") :]
    raise StorageUnavailable(f"unsupported storage url {url!r}")


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Database:
    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        if self.is_sqlite:
            # Reads use connect() and writes begin(), which ends its own transaction: the
            # rollback the pool would add on every return is a wasted thread round trip.
            # SQLite has one writer at a time: one connection that writes, in turn, never
            # meets "database is locked"; BEGIN IMMEDIATE takes the write lock up front so a
            # transaction that reads first cannot fail when it comes to write.
            self.engine: AsyncEngine = create_async_engine(
                async_url(url), pool_reset_on_return=None, pool_size=1, max_overflow=0, pool_timeout=60,
            )
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
        else:
            self.engine = create_async_engine(async_url(url), pool_pre_ping=True)
        self._reader: sa.Engine | None = None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # Reads of an embedded database take microseconds: they run on the event loop's
            # thread, on a connection of their own, instead of a thread round trip each.
            # A pool, not one connection per thread: two reads that overlap (a coroutine
            # suspended inside one) must never share a connection and its cursors.
            self._reader = sa.create_engine(
                url, poolclass=sa.pool.QueuePool, pool_size=4, max_overflow=-1,
                pool_reset_on_return=None, connect_args={"check_same_thread": False},
            )
            event.listen(self._reader, "connect", _sqlite_reader_pragmas)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""

        def upgrade(conn: sa.Connection) -> None:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(upgrade)
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as e:
            raise StorageUnavailable(str(e)) from e

    async def current_revision(self) -> str | None:
        def rev(conn: sa.Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        async with self.engine.connect() as conn:
            return await conn.run_sync(rev)

    @staticmethod
    def head_revision() -> str | None:
        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.engine.begin()

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads (writes go through begin())."""
        if self._reader is not None:
            return _SyncRead(self._reader)  # type: ignore[return-value]
        return self.engine.connect()

    async def close(self) -> None:
        await self.engine.dispose()
        if self._reader is not None:
            self._reader.dispose()


class Prepared:
    """A read of the hot paths (sign-in), built once. On SQLite it runs on the driver's own
    connection: SQLAlchemy's per-execution work (keying the statement, an execution
    context, a result object) costs several times the query itself there. Rows keep
    attribute access and SQLAlchemy's type conversions (booleans, for one)."""

    def __init__(self, stmt: sa.Select[Any]):
        self.stmt = stmt
        self._sqlite: tuple[str, tuple[str, ...], type, list[Any]] | None = None

    def compiled(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...], type, list[Any]]:
        if self._sqlite is None:
            comp = self.stmt.compile(dialect=dialect)
            columns = list(self.stmt.selected_columns)
            row = namedtuple("Row", [c.key for c in columns], rename=True)  # type: ignore[misc]
            processors = [c.type.result_processor(dialect, None) for c in columns]
            self._sqlite = (str(comp), tuple(comp.positiontup or ()), row, processors)
        return self._sqlite


async def fetch(c: Any, prepared: Prepared, params: dict[str, Any]) -> list[Any]:
    """Every row of a prepared read on a connection from Database.connect()."""
    if isinstance(c, _SyncRead):
        return c.rows(prepared, params)
    return list((await c.execute(prepared.stmt, params)).all())


class _SyncRead:
    """The part of AsyncConnection that reads use, served synchronously (SQLite only)."""

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self._conn: sa.Connection | None = None

    async def __aenter__(self) -> _SyncRead:
        self._conn = self._engine.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        # Ends the implicit read transaction so the next read sees newer commits.
        self._conn.rollback()
        self._conn.close()
        self._conn = None

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        assert self._conn is not None
        return self._conn.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        assert self._conn is not None
        return self._conn.scalar(statement, parameters)

    async def scalars(self, statement: Any, parameters: Any = None) -> sa.ScalarResult[Any]:
        assert self._conn is not None
        return self._conn.scalars(statement, parameters)

    async def run_sync(self, fn: Any, *args: Any) -> Any:
        assert self._conn is not None
        return fn(self._conn, *args)

    def rows(self, prepared: Prepared, params: dict[str, Any]) -> list[Any]:
        assert self._conn is not None
        sql, names, row, processors = prepared.compiled(self._conn.dialect)
        raw = self._conn.connection.driver_connection
        assert raw is not None
        found = raw.execute(sql, [params[n] for n in names]).fetchall()
        if any(processors):
            return [row(*(v if f is None or v is None else f(v) for f, v in zip(processors, r, strict=True)))
                    for r in found]
        return [row(*r) for r in found]


def _sqlite_reader_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # A reader must never hold the loop long: give up quickly rather than wait on a lock.
    cur.execute("PRAGMA busy_timeout=200")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # The driver's own implicit BEGIN is off: _sqlite_begin_immediate starts transactions.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; FULL makes a commit durable before we ack it.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
