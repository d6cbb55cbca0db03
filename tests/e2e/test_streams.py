"""Stream negotiation and the hardened parser, from the wire: every SASL mechanism with
channel binding, and the stream and stanza errors for bad input."""

from __future__ import annotations

import base64
import re

import pytest

from parley.server import Server
from parley.xmpp.sasl import tls_server_end_point
from tests.clients import Raw
from tests.conftest import add_user
from tests.unit.test_sasl import ScramClient

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
PLAIN_ALICE = base64.b64encode(b"\0alice\0pencil").decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _payload(xml: bytes, tag: str) -> bytes:
    m = re.search(rb"<" + tag.encode() + rb"[^>]*>([^<]*)</" + tag.encode() + rb">", xml)
    assert m, xml
    return base64.b64decode(m.group(1))


async def _scram(raw: Raw, mech: str, client: ScramClient) -> bytes:
    raw.send(f"<auth xmlns='{SASL}' mechanism='{mech}'>{_b64(client.first())}</auth>")
    challenge = await raw.read_until_any(b"</challenge>", b"</failure>")
    if b"<failure" in challenge:
        return challenge
    raw.send(f"<response xmlns='{SASL}'>{_b64(client.final(_payload(challenge, 'challenge')))}</response>")
    return await raw.read_until_any(b"</success>", b"</failure>")


def _cb(raw: Raw) -> bytes:
    ssl_obj = raw.writer.get_extra_info("ssl_object")
    return tls_server_end_point(ssl_obj.getpeercert(True))


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
async def test_scram_mechanisms(server: Server, mech: str) -> None:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    features = await raw.start()
    assert mech.encode() in features
    assert b"tls-server-end-point" in features
    hash_name = "SHA-256" if "256" in mech else "SHA-1"
    plus = mech.endswith("-PLUS")
    client = ScramClient(hash_name, "alice", "pencil", flag="p=tls-server-end-point" if plus else "y",
                         cb_data=_cb(raw) if plus else b"")
    if not plus:
        client.flag = "n"
    reply = await _scram(raw, mech, client)
    assert b"<success" in reply, reply
    client.verify(_payload(reply, "success"))
    await raw.close()


async def test_plus_with_wrong_channel_binding_fails(server: Server) -> None:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    await raw.start()
    client = ScramClient("SHA-256", "alice", "pencil", flag="p=tls-server-end-point", cb_data=b"\0" * 32)
    reply = await _scram(raw, "SCRAM-SHA-256-PLUS", client)
    assert b"<not-authorized" in reply
    await raw.close()


async def test_downgrade_flag_y_is_refused_when_plus_was_offered(server: Server) -> None:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    await raw.start()
    client = ScramClient("SHA-256", "alice", "pencil", flag="y")
    reply = await _scram(raw, "SCRAM-SHA-256", client)
    assert b"<not-authorized" in reply
    await raw.close()


async def test_scram_wrong_password_and_unknown_user(server: Server) -> None:
    await add_user(server, "alice@example.test", "pencil")
    for user, pw in (("alice", "wrong"), ("nobody", "pencil")):
        raw = await Raw.open(server)
        await raw.start()
        reply = await _scram(raw, "SCRAM-SHA-1", ScramClient("SHA-1", user, pw))
        assert b"<not-authorized" in reply, reply
        await raw.close()


async def test_plain_login_and_bind(server: Server) -> None:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    bind = await raw.login("alice", "pencil", resource="home")
    assert b"alice@example.test/home" in bind
    await raw.close()


async def test_tls_required_before_auth(server: Server) -> None:
    raw = await Raw.open(server, direct_tls=False)
    features = await raw.start()
    assert b"<required" in features
    assert b"mechanism" not in features
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{PLAIN_ALICE}</auth>")
    reply = await raw.read_until(b"</failure>")
    assert b"encryption-required" in reply
    await raw.close()


async def test_plaintext_lab_mode_offers_no_plain(make_server) -> None:
    server = await make_server(c2s={"require_tls": False})
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server, direct_tls=False)
    features = await raw.start()
    assert b"SCRAM-SHA-256" in features and b">PLAIN<" not in features and b"-PLUS" not in features
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{PLAIN_ALICE}</auth>")
    assert b"encryption-required" in await raw.read_until(b"</failure>")
    reply = await _scram(raw, "SCRAM-SHA-256", ScramClient("SHA-256", "alice", "pencil"))
    assert b"<success" in reply
    await raw.close()


async def test_unknown_mechanism(server: Server) -> None:
    raw = await Raw.open(server)
    await raw.start()
    raw.send(f"<auth xmlns='{SASL}' mechanism='DIGEST-MD5'/>")
    assert b"invalid-mechanism" in await raw.read_until(b"</failure>")
    await raw.close()


async def test_stanza_before_auth_is_a_stream_error(server: Server) -> None:
    raw = await Raw.open(server)
    await raw.start()
    raw.send("<message to='bob@example.test'><body>hi</body></message>")
    out = await raw.read_all()
    assert b"<not-authorized" in out and b"</stream:stream>" in out


async def _stream_error_after_login(server: Server, payload: bytes | str, **_: object) -> bytes:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    await raw.login("alice", "pencil")
    raw.send(payload)
    out = await raw.read_all()
    return out


async def test_malformed_xml(server: Server) -> None:
    out = await _stream_error_after_login(server, "<message><body>x</bod></message>")
    assert b"not-well-formed" in out


async def test_entity_expansion_bomb(server: Server) -> None:
    bomb = ("<!DOCTYPE lolz [<!ENTITY lol 'lol'>" + "".join(
        f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10 if i > 1 else '&lol;' * 10}'>" for i in range(1, 10)
    ) + "]><message><body>&lol9;</body></message>")
    out = await _stream_error_after_login(server, bomb)
    assert b"restricted-xml" in out or b"not-well-formed" in out


async def test_undeclared_entity(server: Server) -> None:
    out = await _stream_error_after_login(server, "<message><body>&xxe;</body></message>")
    assert b"restricted-xml" in out or b"not-well-formed" in out


async def test_comment_and_processing_instruction_refused(server: Server) -> None:
    assert b"restricted-xml" in await _stream_error_after_login(server, "<!-- hi --><presence/>")


async def test_oversized_stanza(make_server) -> None:
    server = await make_server(c2s={"max_stanza_bytes": 4096})
    out = await _stream_error_after_login(server, "<message><body>" + "x" * 10000 + "</body></message>")
    assert b"policy-violation" in out


async def test_unknown_host_and_wrong_namespace(server: Server) -> None:
    raw = await Raw.open(server)
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
             "xmlns:stream='http://etherx.jabber.org/streams' to='nowhere.test' version='1.0'>")
    assert b"host-unknown" in await raw.read_all()
    raw = await Raw.open(server)
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
             "xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")
    assert b"invalid-namespace" in await raw.read_all()


async def test_stanza_errors_keep_the_stream(server: Server) -> None:
    await add_user(server, "alice@example.test", "pencil")
    raw = await Raw.open(server)
    await raw.login("alice", "pencil")
    raw.send("<message id='m1' to='bad@@example.test'><body>x</body></message>")
    assert b"jid-malformed" in await raw.read_until(b"</message>")
    raw.send("<message id='m2' to='bob@elsewhere.test'><body>x</body></message>")
    assert b"remote-server-not-found" in await raw.read_until(b"</message>")
    raw.send("<iq id='i1' type='get' to='example.test'><a xmlns='urn:x:a'/><b xmlns='urn:x:b'/></iq>")
    assert b"bad-request" in await raw.read_until(b"</iq>")
    raw.send("<iq id='i2' type='get' to='example.test'><q xmlns='urn:x:unknown'/></iq>")
    assert b"service-unavailable" in await raw.read_until(b"</iq>")
    raw.send("<message id='m3' to='nobody@example.test'><body>x</body></message>")
    assert b"service-unavailable" in await raw.read_until(b"</message>")
    raw.send("<iq id='i3' type='get' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = await raw.read_until(b"/>")
    reply += await raw.read_until(b">") if b"</iq>" not in reply and not reply.endswith(b"/>") else b""
    assert b"i3" in reply
    await raw.close()


async def test_auth_timeout_closes_idle_connection(make_server) -> None:
    server = await make_server(c2s={"auth_timeout": 0.3})
    raw = await Raw.open(server)
    await raw.start()
    out = await raw.read_all()
    assert b"connection-timeout" in out
