"""Account operations shared by the command line, the admin API and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import Executor

from parley.storage.repos import MECHANISMS, Repos
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.sasl import ScramCredentials, derive_scram_credentials

ITERATIONS = 4096


class AccountError(Exception):
    pass


def derive_all(password: str, iterations: int = ITERATIONS) -> dict[str, ScramCredentials]:
    if not password:
        raise AccountError("the password must not be empty")
    return {m: derive_scram_credentials(password, m, iterations=iterations) for m in MECHANISMS}


def parse_user_jid(jid: str, hosts: Iterable[str]) -> JID:
    """A bare account JID on a hosted domain, or AccountError saying why not."""
    try:
        parsed = JID.parse(jid)
    except InvalidJID as e:
        raise AccountError(f"{jid!r} is not a valid JID: {e}") from None
    if parsed.local is None or parsed.resource is not None:
        raise AccountError(f"{jid!r} must be of the form user@domain")
    hosts = set(hosts)
    if parsed.domain not in hosts:
        raise AccountError(f"{parsed.domain} is not a hosted domain (hosted: {', '.join(sorted(hosts))})")
    return parsed


async def create_user(repos: Repos, jid: JID, password: str, executor: Executor | None = None) -> None:
    # Key derivation is deliberately slow; keep it off the event loop.
    creds = await asyncio.get_running_loop().run_in_executor(executor, derive_all, password)
    await repos.users.add(str(jid), jid.domain, creds)


async def set_password(repos: Repos, jid: JID, password: str) -> None:
    creds = await asyncio.get_running_loop().run_in_executor(None, derive_all, password)
    await repos.users.set_credentials(str(jid), creds)
