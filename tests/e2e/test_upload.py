"""HTTP file upload (XEP-0363) end to end: slixmpp asks for slots, an aiohttp client puts
the bytes to the server's HTTPS listener and gets them back; every refusal of a slot, every
refused PUT, CORS for web clients, expiry, and the file transfer switch."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import quoteattr

import aiohttp
import pytest
import sqlalchemy as sa
from slixmpp.exceptions import IqError

from parley.modules.upload import UploadModule
from parley.server import Server
from parley.storage import schema as t
from tests.clients import TIMEOUT, eventually
from tests.conftest import ServerFactory, users
from tests.peer import ALICE, BOB, DOMAIN, NS_STANZAS, Connect, Peer, q

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"

# Every server here lets the system pick the HTTP port.
UPLOAD: dict[str, Any] = {"port": 0}
TEXT = b"hello, upload\n" * 100


def upload_module(server: Server) -> UploadModule:
    mod = server.modules["upload"]
    assert isinstance(mod, UploadModule)
    return mod


async def start(make_server: ServerFactory, **sections: Any) -> Server:
    sections["upload"] = {**UPLOAD, **sections.get("upload", {})}
    server = await make_server(**sections)
    await users(server, ALICE, BOB)
    return server


@pytest.fixture
async def http(cert_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that trusts the test certificate (issued for names, not 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(cert_path))
    ctx.check_hostname = False
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


def request_xml(filename: str | None, size: int | str | None, content_type: str | None = "text/plain") -> str:
    attrs = ""
    if filename is not None:
        attrs += f" filename={quoteattr(filename)}"
    if size is not None:
        attrs += f" size='{size}'"
    if content_type is not None:
        attrs += f" content-type={quoteattr(content_type)}"
    return f"<request xmlns='{NS_UPLOAD}'{attrs}/>"


class Slot:
    def __init__(self, iq: Element):
        slot = iq.find(q(NS_UPLOAD, "slot"))
        assert slot is not None, "no slot in the answer"
        put, get = slot.find(q(NS_UPLOAD, "put")), slot.find(q(NS_UPLOAD, "get"))
        assert put is not None and get is not None
        self.put_url = put.get("url", "")
        self.get_url = get.get("url", "")
        self.headers = {h.get("name", ""): h.text or "" for h in put.findall(q(NS_UPLOAD, "header"))}


async def slot(peer: Peer, filename: str = "notes.txt", size: int = len(TEXT),
               content_type: str | None = "text/plain") -> Slot:
    return Slot(await peer.query("get", request_xml(filename, size, content_type), to=DOMAIN))


async def refusal(peer: Peer, payload: str) -> Element:
    """The <error/> that answers a slot request the server must refuse."""
    iq = peer.c.make_iq(itype="get", ito=DOMAIN)
    iq.append(fromstring(payload))
    with pytest.raises(IqError) as err:
        await iq.send(timeout=TIMEOUT)
    error = err.value.iq.xml.find("{jabber:client}error")
    assert error is not None
    return error


def condition(error: Element) -> str:
    return next(c.tag.rpartition("}")[2] for c in error
                if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text"))


async def put(http: aiohttp.ClientSession, s: Slot, data: bytes = TEXT, content_type: str | None = "text/plain",
              headers: dict[str, str] | None = None) -> int:
    sent = dict(s.headers if headers is None else headers)
    skip: list[str] = []
    if content_type is None:
        skip.append("Content-Type")
    else:
        sent["Content-Type"] = content_type
    async with http.put(s.put_url, data=data, headers=sent, skip_auto_headers=skip) as resp:
        await resp.read()
        return resp.status


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, bytes, Any]:
    async with http.request(method, url) as resp:
        return resp.status, await resp.read(), resp.headers


def stored_files(server: Server) -> list[Path]:
    return sorted(p for p in upload_module(server).root.rglob("*") if p.is_file())


# --- the whole exchange ---------------------------------------------------------------------


async def test_slot_put_and_get_round_trip(make_server: ServerFactory, connect: Connect,
                                           http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE, plugins=("xep_0363",))
    uploader = alice.c.plugin["xep_0363"]
    info = await uploader.find_upload_service()
    assert info is not None and str(info["from"]) == DOMAIN

    answer = await uploader.request_slot(info["from"], "report été.pdf", len(TEXT), "application/pdf")
    s = Slot(answer.xml)
    port = server.ports["upload"]
    assert s.put_url == s.get_url
    assert s.put_url.startswith(f"https://127.0.0.1:{port}/upload/")
    assert s.put_url.endswith("/report%20%C3%A9t%C3%A9.pdf")
    assert s.headers["Authorization"].startswith("Bearer ")

    assert (await fetch(http, s.get_url))[0] == 404, "a slot is no file before its PUT"
    assert await put(http, s, content_type="application/pdf") == 201

    status, body, headers = await fetch(http, s.get_url)
    assert status == 200 and body == TEXT
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''report%20%C3%A9t%C3%A9.pdf" in headers["Content-Disposition"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Access-Control-Allow-Origin"] == "*"

    status, body, headers = await fetch(http, s.get_url, "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(TEXT))

    # The file is stored under its random folder and its own name; nothing else is left.
    files = stored_files(server)
    assert [p.name for p in files] == ["report été.pdf"] and files[0].read_bytes() == TEXT

    # The record the compliance archive reads.
    [rec] = await upload_module(server).uploads.uploaded(owner=ALICE)
    assert (rec.filename, rec.size, rec.content_type) == ("report été.pdf", len(TEXT), "application/pdf")
    assert rec.uploaded_at is not None and rec.created_at <= rec.uploaded_at <= time.time()


async def test_images_are_shown_inline_and_others_can_fetch(make_server: ServerFactory, connect: Connect,
                                                             http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    s = await slot(alice, "cat.png", len(png), "image/png")
    assert await put(http, s, png, "image/png") == 201
    # Anyone given the URL may fetch it, with no session at all.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as anon:
        status, body, headers = await fetch(anon, s.get_url)
    assert status == 200 and body == png
    assert headers["Content-Type"] == "image/png"
    assert "Content-Disposition" not in headers

    # SVG can carry script: it is downloaded, never shown.
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
    s = await slot(alice, "logo.svg", len(svg), "image/svg+xml")
    assert await put(http, s, svg, "image/svg+xml") == 201
    _, _, headers = await fetch(http, s.get_url)
    assert headers["Content-Disposition"].startswith("attachment;")


async def test_plain_http_listener(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, upload={"tls": False})
    alice = await connect(server, ALICE)
    s = await slot(alice)
    assert s.put_url.startswith(f"http://127.0.0.1:{server.ports['upload']}/upload/")
    async with aiohttp.ClientSession() as plain:
        assert await put(plain, s) == 201
        assert (await fetch(plain, s.get_url))[:2] == (200, TEXT)


async def test_public_url_is_what_clients_are_told(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, upload={"public_url": "https://files.example.test/xmpp/"})
    alice = await connect(server, ALICE)
    s = await slot(alice, "a b.txt")
    assert s.put_url.startswith("https://files.example.test/xmpp/upload/")
    assert s.put_url.endswith("/a%20b.txt")


# --- service discovery ------------------------------------------------------------------------


async def test_server_advertises_the_service_and_its_limit(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, upload={"max_file_size": 12345})
    alice = await connect(server, ALICE)
    res = await alice.query("get", f"<query xmlns='{NS_INFO}'/>", to=DOMAIN)
    query = res.find(q(NS_INFO, "query"))
    assert query is not None
    identities = {(i.get("category"), i.get("type")) for i in query.findall(q(NS_INFO, "identity"))}
    assert ("store", "file") in identities and ("server", "im") in identities
    assert NS_UPLOAD in {f.get("var") for f in query.findall(q(NS_INFO, "feature"))}
    forms = {}
    for x in query.findall(q(NS_DATA, "x")):
        fields = {f.get("var"): [v.text for v in f.findall(q(NS_DATA, "value"))] for f in x.findall(q(NS_DATA, "field"))}
        forms[fields["FORM_TYPE"][0]] = fields
    assert forms[NS_UPLOAD]["max-file-size"] == ["12345"]


# --- refused slots ----------------------------------------------------------------------------


async def test_file_too_large(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, upload={"max_file_size": 1000})
    alice = await connect(server, ALICE)
    await slot(alice, size=1000)
    error = await refusal(alice, request_xml("big.bin", 1001))
    assert error.get("type") == "modify" and condition(error) == "not-acceptable"
    too_large = error.find(q(NS_UPLOAD, "file-too-large"))
    assert too_large is not None
    assert too_large.findtext(q(NS_UPLOAD, "max-file-size")) == "1000"


async def test_quota_per_user(make_server: ServerFactory, connect: Connect, http: aiohttp.ClientSession) -> None:
    server = await start(make_server, upload={"quota_per_user": 3 * len(TEXT)})
    alice, bob = await connect(server, ALICE), await connect(server, BOB)
    first = await slot(alice)
    assert await put(http, first) == 201
    # A granted slot holds its space before its PUT, so slots asked at once cannot pass the quota.
    await slot(alice)
    await slot(alice)
    error = await refusal(alice, request_xml("one-more.txt", 1))
    assert error.get("type") == "wait" and condition(error) == "resource-constraint"
    # The quota is per user.
    await slot(bob)


async def test_bad_requests(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    for payload in (
        request_xml("dir/file.txt", 10),
        request_xml("dir\\file.txt", 10),
        request_xml("..", 10),
        request_xml("", 10),
        request_xml(None, 10),
        request_xml("x" * 256, 10),
        request_xml("é" * 128, 10),  # 256 bytes: more than a file system takes
        request_xml("file.txt", None),
        request_xml("file.txt", "ten"),
        request_xml("file.txt", -1),
        request_xml("file.txt", 10, "not a type"),
        f"<other xmlns='{NS_UPLOAD}'/>",
    ):
        assert condition(await refusal(alice, payload)) == "bad-request", payload
    # The longest name there is still fits.
    await slot(alice, "x" * 255, 10)
    # A slot without a content type is for application/octet-stream.
    await slot(alice, "blob", 10, None)


async def test_upload_disabled(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, upload={"enabled": False})
    assert "upload" not in server.ports
    alice = await connect(server, ALICE)
    assert condition(await refusal(alice, request_xml("a.txt", 10))) == "service-unavailable"
    info = await alice.c.plugin["xep_0030"].get_info(jid=DOMAIN)
    assert NS_UPLOAD not in info["disco_info"]["features"]
    assert ("store", "file") not in {i[:2] for i in info["disco_info"]["identities"]}


async def test_file_transfer_switch_off(make_server: ServerFactory, connect: Connect) -> None:
    server = await start(make_server, im={"file_transfer": False})
    assert "upload" not in server.ports, "nothing listens while file transfer is off"
    alice = await connect(server, ALICE)
    error = await refusal(alice, request_xml("a.txt", 10))
    assert condition(error) == "not-allowed"
    info = await alice.c.plugin["xep_0030"].get_info(jid=DOMAIN)
    assert NS_UPLOAD not in info["disco_info"]["features"]


async def test_busy_port_leaves_the_server_running(make_server: ServerFactory, connect: Connect) -> None:
    first = await start(make_server)
    taken = first.ports["upload"]
    second = await make_server(storage_url=f"sqlite:///{upload_module(first).root.parent}/second.db",
                               upload={"port": taken})
    assert "upload" not in second.ports
    await users(second, ALICE)
    alice = await connect(second, ALICE)
    assert condition(await refusal(alice, request_xml("a.txt", 10))) == "service-unavailable"


# --- refused PUTs -----------------------------------------------------------------------------


async def test_put_with_the_wrong_size(make_server: ServerFactory, connect: Connect,
                                       http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    assert await put(http, s, TEXT + b"!") == 413
    assert await put(http, s, TEXT[:-1]) == 400
    assert await put(http, s, b"") == 400
    assert stored_files(server) == [] and (await fetch(http, s.get_url))[0] == 404
    # A refused PUT does not use the slot up.
    assert await put(http, s) == 201


async def test_second_put_is_a_conflict(make_server: ServerFactory, connect: Connect,
                                        http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    assert await put(http, s) == 201
    other = bytes(reversed(TEXT))
    assert await put(http, s, other) == 409
    assert (await fetch(http, s.get_url))[:2] == (200, TEXT)


async def test_put_needs_the_slot_and_its_authorization(make_server: ServerFactory, connect: Connect,
                                                        http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    assert await put(http, s, headers={}) == 403
    assert await put(http, s, headers={"Authorization": "Bearer guessed"}) == 403
    unknown = Slot(fromstring(
        f"<iq xmlns='jabber:client'><slot xmlns='{NS_UPLOAD}'>"
        f"<put url='{s.put_url.rsplit('/', 2)[0]}/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/notes.txt'>"
        f"<header name='Authorization'>{s.headers['Authorization']}</header></put>"
        f"<get url='{s.get_url}'/></slot></iq>"))
    assert await put(http, unknown) == 403
    # The content type must be the one announced.
    assert await put(http, s, content_type="text/html") == 415
    # Unannounced, it is taken as announced.
    assert await put(http, s, content_type=None) == 201
    _, _, headers = await fetch(http, s.get_url)
    assert headers["Content-Type"] == "text/plain"


async def test_expired_slot(make_server: ServerFactory, connect: Connect, http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    async with server.db.begin() as c:
        await c.execute(t.uploads.update().values(created_at=t.uploads.c.created_at - 3600))
    assert await put(http, s) == 403
    assert stored_files(server) == []


async def test_get_of_unknown_file(make_server: ServerFactory, connect: Connect,
                                   http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    base = f"https://127.0.0.1:{server.ports['upload']}"
    for path in ("/upload/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/notes.txt", "/", "/upload/x"):
        status, _, headers = await fetch(http, base + path)
        assert status == 404, path
        assert headers["Access-Control-Allow-Origin"] == "*"


async def test_partial_upload_never_appears(make_server: ServerFactory, connect: Connect, cert_path: Path,
                                            http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    ctx = ssl.create_default_context(cafile=str(cert_path))
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["upload"], ssl=ctx)
    head = (f"PUT {urlsplit(s.put_url).path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {s.headers['Authorization']}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(TEXT)}\r\n\r\n")
    writer.write(head.encode() + TEXT[: len(TEXT) // 2])
    await writer.drain()
    root = upload_module(server).root

    async def receiving() -> bool:
        return any(p.name.endswith(".part") for p in root.rglob("*"))

    await eventually(receiving, "the server started writing the upload")
    assert [p for p in stored_files(server) if not p.name.endswith(".part")] == []
    assert (await fetch(http, s.get_url))[0] == 404
    writer.transport.abort()

    async def cleaned_up() -> bool:
        return stored_files(server) == []

    await eventually(cleaned_up, "the partial upload was removed")
    assert (await fetch(http, s.get_url))[0] == 404
    assert await put(http, s) == 201


# --- CORS ---------------------------------------------------------------------------------------


async def test_cors_preflight(make_server: ServerFactory, connect: Connect, http: aiohttp.ClientSession) -> None:
    server = await start(make_server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    preflight = {"Origin": "https://webclient.example", "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(s.put_url, headers=preflight) as resp:
        assert resp.status in (200, 204)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        methods = {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
        assert {"GET", "PUT", "HEAD", "OPTIONS"} <= methods
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
    async with http.put(s.put_url, data=TEXT, headers={**s.headers, "Content-Type": "text/plain",
                                                       "Origin": "https://webclient.example"}) as resp:
        assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == "*"


# --- expiry ---------------------------------------------------------------------------------------


async def test_expiry_deletes_files_and_rows(make_server: ServerFactory, connect: Connect,
                                             http: aiohttp.ClientSession) -> None:
    server = await start(make_server, upload={"expiry_days": 1})
    mod = upload_module(server)
    alice = await connect(server, ALICE)
    kept = await slot(alice, "kept.txt")
    assert await put(http, kept) == 201
    await slot(alice, "never-sent.txt")

    assert await mod.expire() == 0
    assert (await fetch(http, kept.get_url))[0] == 200

    assert await mod.expire(now=time.time() + 2 * 86400) == 2
    assert stored_files(server) == []
    assert [p for p in mod.root.iterdir()] == []
    async with server.db.connect() as c:
        assert await c.scalar(sa.select(sa.func.count()).select_from(t.uploads)) == 0
    assert (await fetch(http, kept.get_url))[0] == 404


async def test_no_expiry_keeps_files(make_server: ServerFactory, connect: Connect,
                                     http: aiohttp.ClientSession) -> None:
    server = await start(make_server, upload={"expiry_days": 0})
    mod = upload_module(server)
    alice = await connect(server, ALICE)
    s = await slot(alice)
    assert await put(http, s) == 201
    # Only the unused slots go, never the files.
    await slot(alice, "never-sent.txt")
    assert await mod.expire(now=time.time() + 3650 * 86400) == 1
    assert (await fetch(http, s.get_url))[:2] == (200, TEXT)
