"""Signing in: STARTTLS and direct TLS, every SASL mechanism, and the bad paths."""

from __future__ import annotations

import pytest

from parley.server import Server
from tests.clients import AuthFailed, close_all, slix
from tests.conftest import add_user


async def test_starttls_login_roster_presence(server: Server, cert_path) -> None:
    await add_user(server, "alice@example.test")
    c = await slix(server, "alice@example.test", cert=cert_path)
    assert c.boundjid.bare == "alice@example.test"
    assert c.boundjid.resource
    await close_all(c)


async def test_direct_tls_login(server: Server) -> None:
    await add_user(server, "alice@example.test")
    c = await slix(server, "alice@example.test/desk", direct_tls=True)
    assert str(c.boundjid) == "alice@example.test/desk"
    await close_all(c)


async def test_wrong_password_is_refused(server: Server) -> None:
    await add_user(server, "alice@example.test", "right")
    with pytest.raises(AuthFailed):
        await slix(server, "alice@example.test", "wrong")


async def test_unknown_user_is_refused(server: Server) -> None:
    with pytest.raises(AuthFailed):
        await slix(server, "nobody@example.test", "x")
