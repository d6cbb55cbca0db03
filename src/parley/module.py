"""What a feature module is: a class that registers handlers on the router's events."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parley.server import Server


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


Listener = Callable[..., Awaitable[Any]]


class Signals:
    """Server-side events that are not stanzas: session bound, session closed, and so on."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def connect(self, name: str, fn: Listener) -> None:
        self._listeners.setdefault(name, []).append(fn)

    async def emit(self, name: str, *args: Any) -> list[Any]:
        return [await fn(*args) for fn in self._listeners.get(name, ())]
