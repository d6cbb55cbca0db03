"""Entity time (XEP-0202) of the server, always in UTC so that it reveals no location."""

from __future__ import annotations

from datetime import UTC, datetime

from parley.module import Module
from parley.router import Routed
from parley.xmpp.stanza import child, iq_result, make

NS_TIME = "urn:xmpp:time"


def utc_now() -> str:
    """The XEP-0082 DateTime profile, with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EntityTime(Module):
    name = "time"
    server_features = (NS_TIME,)

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_TIME}", self._get)

    async def _get(self, ctx: Routed) -> bool:
        el = make(NS_TIME, "time")
        child(el, NS_TIME, "tzo").text = "+00:00"
        child(el, NS_TIME, "utc").text = utc_now()
        reply = iq_result(ctx.stanza, el)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)
        return True


module_class = EntityTime
