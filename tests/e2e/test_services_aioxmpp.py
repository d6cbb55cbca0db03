"""The key service checks again with a second client library, aioxmpp: server disco
(and its caps hash), vCard set and get, ping and software version."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import aioxmpp
import aioxmpp.connector
import aioxmpp.disco
import aioxmpp.errors
import aioxmpp.ping
import aioxmpp.vcard
import aioxmpp.version
import aioxmpp.version.xso
import pytest
from aioxmpp.entitycaps import caps115

import parley
from parley.modules.disco import CAPS_NODE, NS_CLIENT_POLICY, NS_SERVERINFO
from parley.server import Server
from tests.clients import TIMEOUT
from tests.conftest import add_user
from tests.peer import ALICE, BOB, DOMAIN

SERVER = aioxmpp.JID.fromstr(DOMAIN)


@contextlib.asynccontextmanager
async def connected(server: Server, jid: str, password: str = "secret") -> AsyncIterator[aioxmpp.Client]:
    client = aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(jid),
        aioxmpp.make_security_layer(password, no_verify=True),
        override_peer=[("127.0.0.1", server.ports["c2s"], aioxmpp.connector.STARTTLSConnector())],
        negotiation_timeout=timedelta(seconds=TIMEOUT),
        max_initial_attempts=1,
    )
    async with client.connected():
        yield client


async def test_server_disco_info(server: Server) -> None:
    await add_user(server, ALICE)
    async with connected(server, ALICE) as client:
        disco = client.summon(aioxmpp.DiscoClient)
        info = await disco.query_info(SERVER)
        assert ("server", "im") in {(i.category, i.type_) for i in info.identities}
        assert {"vcard-temp", "urn:xmpp:ping", "jabber:iq:version", "jabber:iq:last",
                "http://jabber.org/protocol/disco#info"} <= set(info.features)
        assert {NS_SERVERINFO, NS_CLIENT_POLICY} <= {form.get_form_type() for form in info.exts}

        # aioxmpp's own XEP-0115 hash of the answer is the ver in the stream features.
        ver = server.modules["disco"].caps.get("ver")  # type: ignore[attr-defined]
        assert caps115.hash_query(info, "sha1") == ver
        node_info = await disco.query_info(SERVER, node=f"{CAPS_NODE}#{ver}", require_fresh=True)
        assert caps115.hash_query(node_info, "sha1") == ver

        with pytest.raises(aioxmpp.errors.XMPPCancelError) as e:
            await disco.query_info(SERVER, node="urn:example:no-such-node")
        assert e.value.condition == aioxmpp.ErrorCondition.ITEM_NOT_FOUND


async def test_vcard_set_and_get(server: Server) -> None:
    await add_user(server, ALICE)
    await add_user(server, BOB)
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    async with connected(server, ALICE) as alice, connected(server, BOB) as bob:
        vcards = alice.summon(aioxmpp.vcard.VCardService)
        card = await vcards.get_vcard()
        assert card.get_photo_data() is None
        card.set_photo_data("image/png", photo)
        await vcards.set_vcard(card)

        own = await vcards.get_vcard()
        assert own.get_photo_data() == photo
        seen = await bob.summon(aioxmpp.vcard.VCardService).get_vcard(aioxmpp.JID.fromstr(ALICE))
        assert seen.get_photo_mime_type() == "image/png"
        assert seen.get_photo_data() == photo

        # Bob may read Alice's vCard but not write it.
        with pytest.raises(aioxmpp.errors.XMPPAuthError) as e:
            await bob.summon(aioxmpp.vcard.VCardService).set_vcard(card, jid=aioxmpp.JID.fromstr(ALICE))
        assert e.value.condition == aioxmpp.ErrorCondition.FORBIDDEN


async def test_ping_and_version(server: Server) -> None:
    await add_user(server, ALICE)
    async with connected(server, ALICE) as client:
        await aioxmpp.ping.ping(client, SERVER)
        await aioxmpp.ping.ping(client, aioxmpp.JID.fromstr(ALICE))

        # The same request as aioxmpp.version.query_version, sent the non-deprecated way.
        version = await client.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=SERVER,
                                               payload=aioxmpp.version.xso.Query()))
        assert version.name == "Parley"
        assert version.version == parley.__version__
        assert version.os is None
