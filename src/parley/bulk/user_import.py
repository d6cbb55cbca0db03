"""Creating accounts in bulk from ``jid,password`` lines (``parley user import``).

Lines are parsed by :func:`parley.bulk.users.parse_users`, then handled in batches: one query
per batch finds the JIDs that exist already, the SCRAM keys of the rest are derived in worker
processes, and the batch is inserted in one transaction, so an account is never half-created.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from parley.accounts import AccountError, derive_all, parse_user_jid
from parley.bulk.users import BadUserLine, UserRow, parse_users
from parley.config import Config
from parley.storage.repos import Repos
from parley.xmpp.jid import JID
from parley.xmpp.sasl import ScramCredentials

__all__ = ["UserImportResult", "count_lines", "import_users", "progress_bar"]

Credentials = dict[str, ScramCredentials]

_HIDDEN = "***"
# The profile's own error names the offending character, which would reveal part of the password.
_BAD_PASSWORD = "the password has characters SCRAM does not allow (RFC 8265 OpaqueString)"


@dataclass
class UserImportResult:
    """What an import did: accounts created, lines refused and, if it ended early, why."""

    created: int = 0
    refused: list[BadUserLine] = field(default_factory=list)
    # Set when a database failure ended the import before the end of the input.
    stopped: str | None = None

    @property
    def bad(self) -> bool:
        return bool(self.refused) or self.stopped is not None

    def render(self) -> str:
        out = [f"line {b.line}: {b.reason}: {b.raw}" for b in sorted(self.refused, key=lambda b: b.line)]
        if self.stopped:
            out.append(f"import stopped: {self.stopped}")
        out.append(f"created {self.created} users, {len(self.refused)} lines refused")
        return "\n".join(out)


@dataclass
class _Batch:
    pending: list[_Pending]
    derivation: asyncio.Future[list[list[Credentials | None]]]
    last_line: int


@dataclass
class _Pending:
    line: int
    jid: JID
    password: str = field(repr=False)

    @property
    def shown(self) -> str:
        return f"{self.jid},{_HIDDEN}"


def _derive_chunk(passwords: list[str]) -> list[Credentials | None]:
    """Runs in a worker process; None marks a password the SCRAM profile refuses."""
    out: list[Credentials | None] = []
    for password in passwords:
        try:
            out.append(derive_all(password))
        except (ValueError, AccountError):
            out.append(None)
    return out


def _describe(e: BaseException) -> str:
    # SQLAlchemy's text carries the statement's parameters, here the users' SCRAM keys.
    if isinstance(e, sa.exc.DBAPIError) and e.orig is not None:
        return f"{type(e.orig).__name__}: {e.orig}"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def count_lines(lines: Iterable[str]) -> int | None:
    """The number of lines for the progress bar, when it can be known without consuming them."""
    if isinstance(lines, str):
        return len(lines.splitlines())
    if isinstance(lines, Sequence):
        return len(lines)
    if isinstance(lines, io.TextIOBase):
        try:
            if not lines.seekable():
                return None
            start = lines.tell()
            total = sum(1 for _ in lines)
            lines.seek(start)
            return total
        except (OSError, ValueError):
            return None
    return None


def progress_bar(label: str) -> Progress:
    """A progress bar for a bulk job on stderr, drawn only when stderr is a terminal."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lines"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # Redirected output gets the summary only, not bar redraws.
        disable=not sys.stderr.isatty(),
    )


class _Importer:
    def __init__(self, repos: Repos, hosts: set[str], result: UserImportResult):
        self.repos = repos
        self.hosts = hosts
        self.result = result
        # Canonical JID -> the line that claimed it. The parser's own duplicate check compares
        # case-folded text; canonical forms can merge more, and a duplicate left in a batch would
        # make the whole batch fail on the primary key.
        self.seen: dict[str, int] = {}
        self._last: tuple[str, JID] | None = None

    def check(self, jid: str) -> str | None:
        try:
            parsed = parse_user_jid(jid, self.hosts)
        except AccountError as e:
            return str(e)
        # The parser yields a line right after checking it, so only the latest parse is needed.
        self._last = (jid, parsed)
        return None

    def accept(self, row: UserRow) -> _Pending | None:
        if self._last is not None and self._last[0] == row.jid:
            jid = self._last[1]
        else:
            jid = parse_user_jid(row.jid, self.hosts)
        key = str(jid)
        if key in self.seen:
            self.refuse(row.line, f"{row.jid},{_HIDDEN}", f"duplicate of line {self.seen[key]}")
            return None
        self.seen[key] = row.line
        return _Pending(row.line, jid, row.password)

    def refuse(self, line: int, raw: str, reason: str) -> None:
        self.result.refused.append(BadUserLine(line, raw, reason))

    async def drop_existing(self, batch: list[_Pending]) -> list[_Pending]:
        found = await self.repos.users.existing(str(p.jid) for p in batch)
        for p in batch:
            if str(p.jid) in found:
                self.refuse(p.line, p.shown, f"{p.jid} exists already")
        return [p for p in batch if str(p.jid) not in found]

    async def insert(self, batch: list[_Pending], creds: list[Credentials | None]) -> None:
        rows: list[tuple[_Pending, Credentials]] = []
        for p, c in zip(batch, creds, strict=True):
            if c is None:
                self.refuse(p.line, p.shown, _BAD_PASSWORD)
            else:
                rows.append((p, c))
        while rows:
            try:
                await self.repos.users.add_many([(str(p.jid), p.jid.domain, c) for p, c in rows])
            except sa.exc.IntegrityError:
                # Someone else created some of these since the check; refuse those, keep the rest.
                found = await self.repos.users.existing(str(p.jid) for p, _ in rows)
                if not found:
                    raise
                for p, _ in rows:
                    if str(p.jid) in found:
                        self.refuse(p.line, p.shown, f"{p.jid} exists already")
                rows = [(p, c) for p, c in rows if str(p.jid) not in found]
                continue
            self.result.created += len(rows)
            return


async def import_users(repos: Repos, cfg: Config, lines: Iterable[str], batch: int) -> UserImportResult:
    """Create the accounts listed as ``jid,password`` lines; see the module docstring."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    result = UserImportResult()
    hosts = {cfg.server.domain, *(name for name, _ in await repos.domains.list())}
    importer = _Importer(repos, hosts, result)
    workers = max(1, os.cpu_count() or 1)
    loop = asyncio.get_running_loop()
    pool: ProcessPoolExecutor | None = None
    total = count_lines(lines)
    last_line = 0
    # Every line up to this one has been created or refused for good.
    settled = 0
    in_flight: _Batch | None = None

    def derive(pending: list[_Pending]) -> asyncio.Future[list[list[Credentials | None]]]:
        nonlocal pool
        if pool is None:
            # Spawned, not forked: this process runs database threads, and a forked child could
            # inherit one of their locks held.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        size = -(-len(pending) // workers)
        chunks = [[p.password for p in pending[i : i + size]] for i in range(0, len(pending), size)]
        return asyncio.gather(*(loop.run_in_executor(pool, _derive_chunk, c) for c in chunks))

    async def finish() -> None:
        nonlocal in_flight, settled
        if in_flight is None:
            return
        done = in_flight
        creds = [c for chunk in await done.derivation for c in chunk]
        await importer.insert(done.pending, creds)
        in_flight = None
        settled = done.last_line

    async def step(pending: list[_Pending], through: int) -> None:
        nonlocal in_flight, settled
        pending = await importer.drop_existing(pending)
        # This batch's keys are derived while the previous batch is written.
        derivation = derive(pending) if pending else None
        try:
            await finish()
        except BaseException:
            if derivation is not None:
                derivation.cancel()
            raise
        if derivation is None:
            settled = through
        else:
            in_flight = _Batch(pending, derivation, through)

    with progress_bar("importing users") as progress:
        task = progress.add_task("users", total=total)
        rows: list[_Pending] = []
        try:
            for item in parse_users(lines, importer.check):
                last_line = item.line
                if isinstance(item, BadUserLine):
                    result.refused.append(item)
                    continue
                pending = importer.accept(item)
                if pending is not None:
                    rows.append(pending)
                if len(rows) >= batch:
                    await step(rows, last_line)
                    rows = []
                    progress.update(task, completed=settled)
            if rows:
                await step(rows, last_line)
            await finish()
            progress.update(task, completed=total or last_line)
        except (sa.exc.SQLAlchemyError, OSError, BrokenProcessPool) as e:
            what = "key derivation failed" if isinstance(e, BrokenProcessPool) else "the database failed"
            result.stopped = (f"{what} ({_describe(e)}); "
                              f"the accounts listed after line {settled} were not created")
        finally:
            if in_flight is not None:
                in_flight.derivation.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return result
