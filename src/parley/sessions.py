"""The session registry: which resources of which account are connected here.

In one process it is a dictionary; a cluster replaces it with one backed by Redis, behind
the same methods, so the router does not change.
"""

from __future__ import annotations

import time
from typing import Protocol
from xml.etree.ElementTree import Element

from parley.xmpp.jid import JID


class Session(Protocol):
    jid: JID  # full JID once bound
    bare: str
    available: bool  # sent available presence and not yet unavailable
    priority: int
    presence: Element | None  # last broadcast available presence
    interested: bool  # requested the roster (RFC 6121 "interested resource")
    login_at: float

    def send(self, stanza: Element) -> None: ...

    def send_bytes(self, data: bytes, stanza: Element | None = None) -> None: ...

    def close(self, condition: str | None = None, text: str | None = None) -> None: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, Session]] = {}
        self.count = 0

    def add(self, session: Session) -> Session | None:
        """Register a bound session; returns the session it replaced (same resource), if any."""
        resources = self._by_bare.setdefault(session.bare, {})
        assert session.jid.resource is not None
        old = resources.get(session.jid.resource)
        resources[session.jid.resource] = session
        if old is None:
            self.count += 1
        session.login_at = time.monotonic()
        return old

    def remove(self, session: Session) -> bool:
        resources = self._by_bare.get(session.bare)
        if not resources or session.jid.resource is None:
            return False
        if resources.get(session.jid.resource) is not session:
            return False
        del resources[session.jid.resource]
        self.count -= 1
        if not resources:
            del self._by_bare[session.bare]
        return True

    def replace(self, old: Session, new: Session) -> None:
        """Hand a registered session's place to another connection (stream resumption)."""
        resources = self._by_bare.get(old.bare, {})
        assert old.jid.resource is not None
        if resources.get(old.jid.resource) is old:
            resources[old.jid.resource] = new

    def get(self, jid: JID) -> Session | None:
        resources = self._by_bare.get(str(jid.bare))
        if not resources or jid.resource is None:
            return None
        return resources.get(jid.resource)

    def of(self, bare: str) -> list[Session]:
        return list(self._by_bare.get(bare, {}).values())

    def resources(self, bare: str) -> int:
        return len(self._by_bare.get(bare, ()))

    def online_users(self) -> list[str]:
        return list(self._by_bare)

    def all(self) -> list[Session]:
        return [s for r in self._by_bare.values() for s in r.values()]
