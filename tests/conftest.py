"""Shared fixtures: a real Parley server on loopback, started in the test's event loop, and
signed-in clients on it (`connect`, which hands out the Peers of tests/peer.py)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from parley.accounts import create_user, parse_user_jid
from parley.certs import self_signed
from parley.config import from_dict
from parley.server import Server
from parley.storage.repos import RosterItem
from tests.clients import close_all, slix
from tests.peer import DOMAIN, OTHER_DOMAIN, Connect, Peer

pytest_plugins = ["tests.pg_fixtures"]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The server runs on uvloop in production; the tests run it there too.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("certs")
    cert, key = d / "server.pem", d / "server.key"
    self_signed([DOMAIN, OTHER_DOMAIN, "localhost", "127.0.0.1"], cert, key)
    return cert, key


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def server_config(tmp_path: Path, cert_pair: tuple[Path, Path], storage_url: str | None = None,
                  **sections: Any) -> dict[str, Any]:
    base = {
        "server": {"domain": DOMAIN, "data_dir": str(tmp_path)},
        "c2s": {"port": 0, "tls_port": 0},
        "upload": {"port": 0},
        "tls": {"cert": str(cert_pair[0]), "key": str(cert_pair[1])},
        "storage": {"url": storage_url or f"sqlite:///{tmp_path}/parley.db"},
    }
    return _merge(base, sections)


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(tmp_path: Path, cert_pair: tuple[Path, Path]) -> AsyncIterator[ServerFactory]:
    started: list[Server] = []

    async def factory(storage_url: str | None = None, **sections: Any) -> Server:
        data = server_config(tmp_path, cert_pair, storage_url, **sections)
        srv = Server(from_dict(data, tmp_path))
        await srv.start()
        started.append(srv)
        return srv

    yield factory
    for srv in reversed(started):
        await srv.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


async def add_user(server: Server, jid: str, password: str = "secret") -> str:
    await create_user(server.repos, parse_user_jid(jid, server.hosts), password)
    return jid


async def users(server: Server, *jids: str) -> None:
    for jid in jids:
        await add_user(server, jid)


async def subscribed(server: Server, watcher: str, contact: str, both: bool = False) -> None:
    """Stores an existing subscription (watcher receives contact's presence) before anyone
    signs in, so that a test starts from that state."""
    await server.repos.roster.save(watcher, [RosterItem(contact, subscription="both" if both else "to")])
    await server.repos.roster.save(contact, [RosterItem(watcher, subscription="both" if both else "from")])


@pytest.fixture
def cert_path(cert_pair: tuple[Path, Path]) -> Path:
    return cert_pair[0]


@pytest.fixture
async def connect(make_server: ServerFactory) -> AsyncIterator[Connect]:
    peers: list[Peer] = []

    async def go(server: Server, jid: str, *, roster: bool = True, available: bool = True,
                 plugins: tuple[str, ...] = (), **presence: Any) -> Peer:
        """Signs in; `presence` (pshow, pstatus, ppriority) goes into the initial presence,
        which the server has fully processed when this returns."""
        c = await slix(server, jid, presence=False, get_roster=roster, plugins=plugins)
        # The tests answer subscription requests themselves.
        c.auto_authorize = None
        c.auto_subscribe = False
        peer = Peer(c)
        peers.append(peer)
        if available:
            c.send_presence(**presence)
            await peer.mark()
        return peer

    yield go
    await close_all(*(p.c for p in peers))
