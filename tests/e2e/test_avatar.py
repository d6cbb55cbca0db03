"""Avatars end to end with slixmpp: XEP-0084 (PEP) and XEP-0153 (vCard-temp) converted both
ways as XEP-0398 describes, and the photo hash the server adds to presence."""

from __future__ import annotations

import hashlib
import struct
import zlib
from xml.etree.ElementTree import Element

from parley.modules.vcard import MAX_VCARD_BYTES
from parley.server import Server
from tests.conftest import subscribed, users
from tests.e2e.test_pep import event, items_of, online, published
from tests.peer import ALICE, BOB, Connect, Peer, presence, q

NS_DATA = "urn:xmpp:avatar:data"
NS_META = "urn:xmpp:avatar:metadata"
NS_UPDATE = "vcard-temp:x:update"
PLUGINS = ("xep_0054", "xep_0084", "xep_0153")


def png(width: int, height: int, filler: int = 0) -> bytes:
    """A PNG signature and header chunk (enough for anyone who reads sizes), plus filler."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * filler + b"\0\0\0\0IEND\xaeB`\x82"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


async def vcard_photo(peer: Peer, owner: str) -> tuple[bytes | None, str | None]:
    res = await peer.c.plugin["xep_0054"].get_vcard(jid=owner, local=False, cached=False)
    photo = res["vcard_temp"]["PHOTO"]
    return photo["BINVAL"] or None, photo["TYPE"] or None


def photo_hash(el: Element) -> str | None:
    photo = el.find(f"{q(NS_UPDATE, 'x')}/{q(NS_UPDATE, 'photo')}")
    return None if photo is None else (photo.text or "")


async def test_avatar_published_in_pep_appears_in_the_vcard(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    b = await online(server, connect, f"{BOB}/desk", plugins=PLUGINS)
    # Alice's client knows nothing of XEP-0153; the server adds the (empty) hash for her.
    a = await online(server, connect, f"{ALICE}/desk", plugins=("xep_0084",))
    first = await b.next(presence(f"{ALICE}/desk"), "alice's presence")
    assert photo_hash(first) == ""
    info = await a.c.plugin["xep_0030"].get_info(jid=ALICE)
    assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]

    image = png(3, 2)
    sha1 = hashlib.sha1(image).hexdigest()
    await a.c.plugin["xep_0084"].publish_avatar(image)
    await a.c.plugin["xep_0084"].publish_avatar_metadata([{"id": sha1, "type": "image/png", "bytes": len(image)}])

    assert await vcard_photo(b, ALICE) == (image, "image/png")
    # Contacts with XEP-0153 clients learn of it from alice's presence, sent again.
    again = await b.next(presence(f"{ALICE}/desk"), "alice's presence with the new hash")
    assert photo_hash(again) == sha1

    # Empty metadata: no avatar any more, and no PHOTO.
    await a.c.plugin["xep_0084"].stop()
    assert await vcard_photo(b, ALICE) == (None, None)
    cleared = await b.next(presence(f"{ALICE}/desk"), "alice's presence without a hash")
    assert photo_hash(cleared) == ""


async def test_vcard_photo_is_published_as_a_pep_avatar(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    b = await online(server, connect, f"{BOB}/desk", NS_META, plugins=PLUGINS)
    image = jpeg(64, 48)
    sha1 = hashlib.sha1(image).hexdigest()
    await a.c.plugin["xep_0153"].set_avatar(avatar=image, mtype="image/jpeg")

    msg = await b.next(event(NS_META, ALICE), "the avatar metadata")
    [(item_id, meta)] = published(msg)
    assert item_id == sha1
    info = meta.find(q(NS_META, "info"))
    assert info is not None
    assert dict(info.attrib) == {"id": sha1, "bytes": str(len(image)), "type": "image/jpeg",
                                 "width": "64", "height": "48"}
    data = await b.c.plugin["xep_0084"].retrieve_avatar(ALICE, sha1)
    assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == image

    # Setting the same vCard again publishes nothing new.
    await b.mark()
    await a.c.plugin["xep_0153"].set_avatar(avatar=image, mtype="image/jpeg")
    # The vCard is converted after the set is answered; alice's next round trip waits for
    # that, and bob's then for anything it sent him.
    await a.mark()
    assert [e for e in await b.mark() if event(NS_META)(e)] == []

    # A vCard without a photo takes the avatar away.
    card = a.c.plugin["xep_0054"].make_vcard()
    card["FN"] = "Alice"
    await a.c.plugin["xep_0054"].publish_vcard(card)
    msg = await b.next(event(NS_META, ALICE), "the avatar switched off")
    [(_, meta)] = published(msg)
    assert meta.find(q(NS_META, "info")) is None


async def test_avatar_too_large_for_a_vcard_stays_in_pep(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    small = png(1, 1)
    await a.c.plugin["xep_0153"].set_avatar(avatar=small, mtype="image/png")
    big = png(512, 512, filler=MAX_VCARD_BYTES)
    sha1 = hashlib.sha1(big).hexdigest()
    await a.c.plugin["xep_0084"].publish_avatar(big)
    await a.c.plugin["xep_0084"].publish_avatar_metadata([{"id": sha1, "type": "image/png", "bytes": len(big)}])
    [item] = await items_of(a, ALICE, NS_DATA, sha1)
    assert item.get("id") == sha1
    # The vCard keeps the last photo that fits.
    assert (await vcard_photo(a, ALICE))[0] == small
