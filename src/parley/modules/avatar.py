"""User avatars: XEP-0084 (PEP nodes ``urn:xmpp:avatar:data`` and ``urn:xmpp:avatar:metadata``)
and vCard-based avatars (XEP-0153), converted both ways as XEP-0398 describes.

- A vCard-temp set with a PHOTO publishes that image as the XEP-0084 avatar; a vCard
  without one (or with an empty one) disables it.
- XEP-0084 metadata pointing at published data puts the image in the vCard's PHOTO; empty
  metadata removes the PHOTO. An avatar too large for a vCard (vcard.MAX_VCARD_BYTES) stays
  in PEP only.
- Available presence the user sends gets ``<x xmlns='vcard-temp:x:update'><photo/></x>``
  with the avatar's SHA-1 unless the client put a photo hash there itself, and when the
  avatar changes the user's presence is sent again with the new hash, so that XEP-0153
  clients of contacts fetch it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, ParseError, fromstring

from parley.module import Module
from parley.modules.pep import Pep, PepError
from parley.modules.vcard import MAX_VCARD_BYTES, NS_VCARD
from parley.router import Routed
from parley.xmpp.stanza import child, make, q
from parley.xmpp.xmlstream import serialize

if TYPE_CHECKING:
    from parley.server import Server

NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_UPDATE = "vcard-temp:x:update"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
HASH_CACHE_SIZE = 20000


def _dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF or JPEG image, read from its header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] == b"GIF8" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            # Start-of-frame markers carry the size; C4, C8 and CC are other tables.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _sniff(data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _decode(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def vcard_photo(vcard: Element) -> tuple[bytes, str] | None:
    """The image of a vCard-temp and its media type, if it has one inline."""
    photo = vcard.find(q(NS_VCARD, "PHOTO"))
    if photo is None:
        return None
    data = _decode(photo.findtext(q(NS_VCARD, "BINVAL")))
    if not data:
        return None
    mtype = (photo.findtext(q(NS_VCARD, "TYPE")) or "").strip() or _sniff(data) or "image/png"
    return data, mtype


class Avatar(Module):
    name = "avatar"
    account_features = (NS_CONVERSION,)

    def __init__(self, server: Server):
        super().__init__(server)
        # user -> SHA-1 of the avatar, "" for none
        self._hashes: OrderedDict[str, str] = OrderedDict()
        # Users whose vCard this module is writing: that vCard holds PEP's avatar already.
        self._writing: set[str] = set()

    @property
    def pep(self) -> Pep:
        pep = self.server.modules["pep"]
        assert isinstance(pep, Pep)
        return pep

    async def start(self) -> None:
        self.server.signals.connect("vcard-updated", self._vcard_updated)
        self.server.signals.connect("pep-published", self._published)
        self.hooks.add("presence/broadcast", self._on_presence, priority=40)

    # --- vCard to PEP ----------------------------------------------------------------------------

    async def _vcard_updated(self, owner: str, vcard: Element) -> None:
        if owner in self._writing:
            return
        try:
            await self._from_vcard(owner, vcard)
        except PepError as e:
            self.log.warning("the vCard photo of %s was not published as an avatar: %s", owner, e.text or e.condition)
        except Exception:
            self.log.exception("the vCard photo of %s was not published as an avatar", owner)

    async def _metadata(self, owner: str) -> Element | None:
        items = await self.pep.items(owner, NS_AVATAR_META, 1)
        return items[-1][1] if items else None

    async def _from_vcard(self, owner: str, vcard: Element) -> None:
        photo = vcard_photo(vcard)
        meta = await self._metadata(owner)
        current = _info(meta)
        if photo is None:
            await self._set_hash(owner, "")
            if current is not None:
                await self.pep.publish(owner, NS_AVATAR_META, "current", make(NS_AVATAR_META, "metadata"),
                                       source=self.name)
            return
        data, mtype = photo
        sha1 = hashlib.sha1(data).hexdigest()
        if current is None or current.get("id") != sha1:
            await self.pep.publish(owner, NS_AVATAR_DATA, sha1,
                                   make(NS_AVATAR_DATA, "data", text=base64.b64encode(data).decode("ascii")),
                                   source=self.name)
            info: dict[str, str] = {"id": sha1, "bytes": str(len(data)), "type": mtype}
            dims = _dimensions(data)
            if dims is not None:
                info["width"], info["height"] = str(dims[0]), str(dims[1])
            await self.pep.publish(owner, NS_AVATAR_META, sha1,
                                   make(NS_AVATAR_META, "metadata", {}, make(NS_AVATAR_META, "info", info)),
                                   source=self.name)
        await self._set_hash(owner, sha1)

    # --- PEP to vCard ----------------------------------------------------------------------------

    async def _published(self, owner: str, node: str, item_id: str, payload: Element, source: str | None) -> None:
        if source == self.name or node not in (NS_AVATAR_META, NS_AVATAR_DATA):
            return
        try:
            if node == NS_AVATAR_META:
                await self._from_metadata(owner, payload)
            else:
                # Data published after its metadata: the metadata can be applied now.
                meta = await self._metadata(owner)
                info = _info(meta)
                if info is not None and info.get("id") == item_id and meta is not None:
                    await self._from_metadata(owner, meta)
        except Exception:
            self.log.exception("the avatar of %s was not copied to the vCard", owner)

    async def _from_metadata(self, owner: str, meta: Element) -> None:
        info = _info(meta)
        if info is None:
            await self._write_photo(owner, None)
            return
        found = await self.pep.items(owner, NS_AVATAR_DATA, item_ids=[info.get("id", "")])
        data = _decode(found[0][1].text) if found else None
        if not data:
            # Not published yet (or only hosted elsewhere): nothing to copy.
            return
        await self._write_photo(owner, (data, info.get("type") or _sniff(data) or "image/png"))

    async def _load_vcard(self, owner: str) -> Element:
        stored = await self.repos.docs.get_vcard(owner)
        if stored:
            try:
                return fromstring(stored)
            except ParseError:
                self.log.error("the stored vCard of %s cannot be parsed; starting a new one", owner)
        return make(NS_VCARD, "vCard")

    async def _write_photo(self, owner: str, photo: tuple[bytes, str] | None) -> None:
        vcard = await self._load_vcard(owner)
        old = vcard_photo(vcard)
        if old == photo or (photo is not None and old is not None and old[0] == photo[0]):
            return
        for el in vcard.findall(q(NS_VCARD, "PHOTO")):
            vcard.remove(el)
        if photo is not None:
            el = child(vcard, NS_VCARD, "PHOTO")
            child(el, NS_VCARD, "TYPE").text = photo[1]
            child(el, NS_VCARD, "BINVAL").text = base64.b64encode(photo[0]).decode("ascii")
        data = serialize(vcard, "")
        if len(data) > MAX_VCARD_BYTES:
            self.log.info("the avatar of %s is too large for a vCard (%d bytes); it stays in PEP only",
                          owner, len(data))
            return
        await self.repos.docs.set_vcard(owner, data.decode("utf-8"))
        await self._set_hash(owner, hashlib.sha1(photo[0]).hexdigest() if photo else "")
        # Other listeners learn of the new vCard as if the client had set it.
        self._writing.add(owner)
        try:
            await self.server.signals.emit("vcard-updated", owner, vcard)
        finally:
            self._writing.discard(owner)

    # --- XEP-0153 presence -----------------------------------------------------------------------

    async def _hash(self, owner: str) -> str:
        known = self._hashes.get(owner)
        if known is not None:
            self._hashes.move_to_end(owner)
            return known
        photo = vcard_photo(await self._load_vcard(owner))
        value = hashlib.sha1(photo[0]).hexdigest() if photo else ""
        self._remember(owner, value)
        return value

    def _remember(self, owner: str, value: str) -> None:
        self._hashes[owner] = value
        self._hashes.move_to_end(owner)
        while len(self._hashes) > HASH_CACHE_SIZE:
            self._hashes.popitem(last=False)

    async def _on_presence(self, ctx: Routed) -> bool:
        if ctx.origin is None or ctx.type != "available":
            return False
        try:
            x = ctx.stanza.find(q(NS_UPDATE, "x"))
            if x is None or x.find(q(NS_UPDATE, "photo")) is None:
                value = await self._hash(ctx.origin.bare)
                if x is None:
                    x = child(ctx.stanza, NS_UPDATE, "x")
                child(x, NS_UPDATE, "photo").text = value or None
        except Exception:
            self.log.exception("adding the avatar hash to the presence of %s failed", ctx.frm)
        return False

    async def _set_hash(self, owner: str, value: str) -> None:
        """Remember the avatar's hash; resend presence that carries another one."""
        self._remember(owner, value)
        presence: Any = self.server.modules["presence"]
        for session in self.router.sessions.of(owner):
            current = session.presence
            if not session.available or current is None:
                continue
            x = current.find(q(NS_UPDATE, "x"))
            photo = x.find(q(NS_UPDATE, "photo")) if x is not None else None
            if photo is not None and (photo.text or "") == value:
                continue
            updated = copy.deepcopy(current)
            for old in updated.findall(q(NS_UPDATE, "x")):
                updated.remove(old)
            child(child(updated, NS_UPDATE, "x"), NS_UPDATE, "photo").text = value or None
            await presence.broadcast(session, updated)


def _info(meta: Element | None) -> Element | None:
    """The metadata's description of the image kept in the data node (not a URL one)."""
    if meta is None:
        return None
    for info in meta.findall(q(NS_AVATAR_META, "info")):
        if info.get("id") and not info.get("url"):
            return info
    return None


module_class = Avatar
