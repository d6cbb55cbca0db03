"""What a feature module is: a class that registers handlers on the router's events."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from parley.xmpp.stanza import iq_result

if TYPE_CHECKING:
    from parley.router import Routed
    from parley.server import Server


class Refusal(Exception):
    """A request refused with an XMPP error condition and a text for the user."""

    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition = condition
        self.text = text


class Module:
    name = "module"
    # disco#info features this module adds to the server and to accounts.
    server_features: tuple[str, ...] = ()
    account_features: tuple[str, ...] = ()

    def __init__(self, server: Server):
        self.server = server
        self.router = server.router
        self.hooks = server.router.hooks
        self.repos = server.repos
        self.config = server.config
        self.log = logging.getLogger(f"parley.{self.name}")

    async def start(self) -> None:
        """Register handlers; called once the database is ready."""

    async def stop(self) -> None:
        """Flush what must be kept; called before the database closes."""

    async def reply(self, ctx: Routed, *payload: Element) -> None:
        """Answer an iq with a result: straight to a local session, else through the router."""
        result = iq_result(ctx.stanza, *payload)
        if ctx.origin is not None:
            ctx.origin.send(result)
        else:
            await self.router.route(result)

    def refuse(self, ctx: Routed, condition: str, text: str | None = None) -> bool:
        """Answer a stanza with an error; True, so a handler can `return self.refuse(...)`."""
        self.router.bounce(ctx.stanza, condition, text, ctx.origin)
        return True


Listener = Callable[..., Awaitable[Any]]


class Signals:
    """Server-side events that are not stanzas: session bound, session closed, and so on."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def connect(self, name: str, fn: Listener) -> None:
        self._listeners.setdefault(name, []).append(fn)

    async def emit(self, name: str, *args: Any) -> list[Any]:
        return [await fn(*args) for fn in self._listeners.get(name, ())]
