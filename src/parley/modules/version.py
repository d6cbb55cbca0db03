"""Software version (XEP-0092) of the server.

The operating system is left out: it tells an attacker more than it tells a user.
"""

from __future__ import annotations

import parley
from parley.module import Module
from parley.router import Routed
from parley.xmpp.stanza import child, iq_result, make

NS_VERSION = "jabber:iq:version"


class Version(Module):
    name = "version"
    server_features = (NS_VERSION,)

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_VERSION}", self._get)

    async def _get(self, ctx: Routed) -> bool:
        query = make(NS_VERSION, "query")
        child(query, NS_VERSION, "name").text = "Parley"
        child(query, NS_VERSION, "version").text = parley.__version__
        reply = iq_result(ctx.stanza, query)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)
        return True


module_class = Version
