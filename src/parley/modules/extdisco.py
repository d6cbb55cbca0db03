"""External service discovery (XEP-0215): the STUN and TURN servers clients should use for
calls and file transfer, from ``[[external_services]]``.

A service gets either static credentials (``username``/``password``) or, with a
``secret``, temporary ones in the TURN REST API scheme that coturn and others check
without asking us: username ``<expiry unix time>:<user>`` and password
base64(HMAC-SHA1(secret, username)), valid for ``ttl`` seconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from xml.etree.ElementTree import Element

from parley.config import ExternalService
from parley.module import Module
from parley.router import Routed
from parley.xmpp.stanza import error_reply, iq_result, make, q

NS_EXTDISCO = "urn:xmpp:extdisco:2"


def turn_rest_credentials(secret: str, user: str, ttl: int, now: float | None = None) -> tuple[str, str, int]:
    """(username, password, expiry) of temporary TURN credentials for `user`."""
    expiry = int(now if now is not None else time.time()) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode(), expiry


def _stamp(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ExtDiscoModule(Module):
    name = "extdisco"
    server_features = (NS_EXTDISCO,)

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_EXTDISCO}", self._query)

    def _element(self, svc: ExternalService, user: str) -> Element:
        attrs = {"type": svc.type, "host": svc.host, "port": str(svc.port), "transport": svc.transport}
        if svc.secret:
            username, password, expiry = turn_rest_credentials(svc.secret, user, svc.ttl)
            attrs.update(username=username, password=password, expires=_stamp(expiry), restricted="true")
        elif svc.username is not None:
            attrs["username"] = svc.username
            if svc.password is not None:
                attrs["password"] = svc.password
        return make(NS_EXTDISCO, "service", attrs)

    async def _query(self, ctx: Routed) -> bool:
        if ctx.origin is None:
            # Credentials are for our own users' clients only.
            self.router.bounce(ctx.stanza, "forbidden", "external services are for local users")
            return True
        req = ctx.stanza[0]
        user = ctx.origin.bare
        name = req.tag.rpartition("}")[2]
        if name == "services":
            wanted = req.get("type")
            out = make(NS_EXTDISCO, "services", {"type": wanted} if wanted else {})
            for svc in self.config.external_services:
                if wanted is None or svc.type == wanted:
                    out.append(self._element(svc, user))
            ctx.origin.send(iq_result(ctx.stanza, out))
            return True
        if name == "credentials":
            asked = req.find(q(NS_EXTDISCO, "service"))
            if asked is None or not asked.get("host"):
                ctx.origin.send(error_reply(ctx.stanza, "bad-request", "name the service by host (and type)"))
                return True
            port = asked.get("port")
            for svc in self.config.external_services:
                if svc.host != asked.get("host"):
                    continue
                if asked.get("type") not in (None, svc.type) or port not in (None, str(svc.port)):
                    continue
                if not (svc.secret or svc.username is not None):
                    continue
                out = make(NS_EXTDISCO, "credentials")
                out.append(self._element(svc, user))
                ctx.origin.send(iq_result(ctx.stanza, out))
                return True
            ctx.origin.send(error_reply(ctx.stanza, "item-not-found", "no service with credentials matches"))
            return True
        ctx.origin.send(error_reply(ctx.stanza, "bad-request", f"unknown request <{name}/>"))
        return True


module_class = ExtDiscoModule
