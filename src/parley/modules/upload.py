"""HTTP file upload (XEP-0363 v1.1), served by the server itself.

A signed-in user asks the server's domain for a slot, naming the file, its size and its
content type; the server checks the size limit and the user's quota, reserves the space and
answers with a PUT URL (and the ``Authorization`` header that goes with it) and a GET URL.
The client then talks HTTP(S) to the listener started here: one PUT of exactly the announced
bytes, then any number of GETs by whoever was given the URL. The random folder in the URL is
what makes it unguessable, so the URLs themselves are never logged.

Everything is under ``[im] file_transfer`` (SPEC C5): with it off nothing listens and slot
requests are refused. Files live in ``storage_dir/<random folder>/<file name>``; a PUT is
written to a temporary file, made durable, then renamed, so a partial upload is never
served. Files older than ``expiry_days`` are deleted with their rows by an hourly task. The
``uploads`` table records every slot and completed upload for the compliance archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote
from xml.etree.ElementTree import Element

from aiohttp import hdrs, web

from parley.certs import server_context
from parley.module import Module
from parley.modules.disco import ExtendedInfo, FormField
from parley.router import Routed
from parley.storage.uploads import UploadRecord, UploadRepo
from parley.xmpp.caps import Identity
from parley.xmpp.stanza import error_reply, iq_result, local_name, make

if TYPE_CHECKING:
    from parley.server import Server

NS_UPLOAD = "urn:xmpp:http:upload:0"

# A slot is meant to be used right away; one not used in this many seconds is void and
# stops counting against the quota.
SLOT_LIFETIME = 300.0
# Rows of slots never used are removed after this long; generous so that a slow PUT that
# began in time is never pulled from under its feet.
STALE_SLOT_AFTER = 86400.0
EXPIRY_INTERVAL = 3600.0
CHUNK = 256 * 1024
# Most file systems limit a name to 255 bytes, which is also the XEP's usual bound.
MAX_FILENAME = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"
ALLOWED_METHODS = "GET, PUT, HEAD, OPTIONS"

_FOLDER_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TOKEN_CHARS = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_MEDIA_TYPE_RE = re.compile(rf"{_TOKEN_CHARS}/{_TOKEN_CHARS}")


def filename_problem(name: str | None) -> str | None:
    """Why a requested file name cannot be used, or None when it can."""
    if not name:
        return "the request names no file"
    if len(name) > MAX_FILENAME or len(name.encode("utf-8")) > MAX_FILENAME:
        return f"file names are limited to {MAX_FILENAME} bytes"
    if "/" in name or "\\" in name:
        return "a file name cannot contain path separators"
    if name in (".", ".."):
        return "not a file name"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "a file name cannot contain control characters"
    return None


def media_type(value: str | None) -> str:
    """The type/subtype of a Content-Type value, lower case, without parameters."""
    return (value or "").split(";", 1)[0].strip().lower()


def content_type_ok(value: str) -> bool:
    # It is sent back verbatim in a header: nothing but a well-formed, printable value.
    if len(value) > 255 or any(not (32 <= ord(ch) < 127) for ch in value):
        return False
    return _MEDIA_TYPE_RE.fullmatch(media_type(value)) is not None


def inline_type(value: str) -> bool:
    # SVG is an image that can carry script: it is downloaded, not shown.
    mt = media_type(value)
    return mt.startswith("image/") and mt != "image/svg+xml"


def content_disposition(filename: str) -> str:
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _remove_folder(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


def _open_part(folder: Path) -> tuple[Path, IO[bytes]]:
    # The folder is the file's only protection besides its random name: owner-only.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = folder / f".{secrets.token_hex(8)}.part"
    # Left open for the caller: _commit or _discard closes it.
    return part, open(part, "xb")


def _commit(f: IO[bytes], part: Path, final: Path) -> None:
    # Durable before it is visible: once the PUT is answered, the file survives a crash.
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(f: IO[bytes], part: Path) -> None:
    f.close()
    with contextlib.suppress(FileNotFoundError):
        part.unlink()


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    # Web clients upload and download from another origin; the URL is the credential, so
    # any origin may use it.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Max-Age"] = "86400"


class UploadModule(Module):
    name = "upload"

    def __init__(self, server: Server):
        super().__init__(server)
        self.settings = self.config.upload
        self.uploads = UploadRepo(server.db)
        self.root = self.config.path(self.settings.storage_dir)
        # What clients are told; set once the listener is up.
        self.base_url: str | None = None
        # Advertised only while the service can actually take files.
        self.server_features: tuple[str, ...] = ()
        self.server_identities: tuple[Identity, ...] = ()
        self.extra_forms: tuple[ExtendedInfo, ...] = ()
        self._runner: web.AppRunner | None = None
        self._expiry: asyncio.Task[None] | None = None
        # Uploads whose PUT is being received: a second PUT meanwhile is a conflict.
        self._receiving: set[int] = set()
        # Quota check and reservation of one user must not interleave with another's
        # request for the same user (PostgreSQL does not serialise them for us).
        self._reserving = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self._runner is not None and self.config.im.file_transfer

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_UPLOAD}", self._slot_request)
        # Files kept from before the service was switched off still expire on time.
        self._expiry = asyncio.get_running_loop().create_task(self._expire_periodically())
        if not (self.settings.enabled and self.config.im.file_transfer):
            return
        try:
            await self._listen()
        except OSError as e:
            # File upload is an accessory: a busy port or a missing certificate must not
            # keep people from chatting. It is left unadvertised and refuses slots.
            self.log.error("HTTP upload is not available: cannot listen on %s port %s: %s",
                           self.settings.host, self.settings.port, e)
            return
        self.server_features = (NS_UPLOAD,)
        # The language is stated for the reason the server's own identity states it.
        self.server_identities = (Identity("store", "file", "en", "HTTP File Upload"),)
        self.extra_forms = (ExtendedInfo(NS_UPLOAD, (
            FormField("max-file-size", (str(self.settings.max_file_size),)),
        )),)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            self.server.ports.pop("upload", None)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._http)
        app.on_response_prepare.append(_cors)
        # No access log: a GET URL is the key to the file, and logs are read by many.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        ssl_ctx = None
        try:
            if self.settings.tls:
                cert, key = self.config.path(self.config.tls.cert), self.config.path(self.config.tls.key)
                ssl_ctx = server_context(cert, key, self.config.tls.min_version)
                # The server context offers the XMPP protocol name; HTTP clients ask for this.
                ssl_ctx.set_alpn_protocols(["http/1.1"])
            site = web.TCPSite(runner, self.settings.host, self.settings.port, ssl_context=ssl_ctx,
                               reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = int(runner.addresses[0][1])
        self.server.ports["upload"] = port
        self.base_url = self.settings.public_url or self._default_base(port)
        self.log.info("HTTP upload listening on %s port %s, files served as %s",
                      self.settings.host, port, self.base_url)

    def _default_base(self, port: int) -> str:
        scheme = "https" if self.settings.tls else "http"
        host = self.settings.host
        if host in ("", "0.0.0.0", "::"):
            # Every interface: the domain is the one name the certificate surely carries.
            host = self.server.domain
        elif ":" in host:
            host = f"[{host}]"
        if (scheme, port) in (("https", 443), ("http", 80)):
            return f"{scheme}://{host}"
        return f"{scheme}://{host}:{port}"

    # --- slots -----------------------------------------------------------------------------

    def _refuse(self, ctx: Routed, condition: str, text: str, app: Element | None = None) -> bool:
        assert ctx.origin is not None
        ctx.origin.send(error_reply(ctx.stanza, condition, text, app=app))
        return True

    async def _slot_request(self, ctx: Routed) -> bool:
        if ctx.origin is None:
            # Slots are for this server's own signed-in users.
            self.router.bounce(ctx.stanza, "forbidden", "uploads are for local users")
            return True
        req = ctx.stanza[0]
        if local_name(req.tag) != "request":
            return self._refuse(ctx, "bad-request", f"unknown element <{local_name(req.tag)}/>")
        if not self.settings.enabled:
            return self._refuse(ctx, "service-unavailable", "file upload is not offered here")
        if not self.config.im.file_transfer:
            return self._refuse(ctx, "not-allowed", "file transfer is disabled on this server")
        if self._runner is None or self.base_url is None:
            return self._refuse(ctx, "service-unavailable", "file upload is not available right now")
        filename = req.get("filename")
        problem = filename_problem(filename)
        if problem or filename is None:
            return self._refuse(ctx, "bad-request", problem or "the request names no file")
        size_s = req.get("size", "")
        if not size_s.isascii() or not size_s.isdigit():
            return self._refuse(ctx, "bad-request", "size must be the file's length in bytes")
        size = int(size_s)
        content_type = (req.get("content-type") or "").strip() or DEFAULT_CONTENT_TYPE
        if not content_type_ok(content_type):
            return self._refuse(ctx, "bad-request", "content-type is not a valid media type")
        limit = self.settings.max_file_size
        if size > limit:
            too_large = make(NS_UPLOAD, "file-too-large")
            too_large.append(make(NS_UPLOAD, "max-file-size", text=str(limit)))
            return self._refuse(ctx, "not-acceptable", f"file too large: the limit is {limit} bytes",
                                too_large)
        now = time.time()
        folder = secrets.token_urlsafe(24)
        token = secrets.token_urlsafe(32)
        async with self._reserving:
            granted = await self.uploads.reserve(
                owner=ctx.origin.bare, token=token, filename=filename, size=size,
                content_type=content_type, path=f"{folder}/{filename}", created_at=now,
                quota=self.settings.quota_per_user, uploaded_since=self._kept_since(now),
                pending_since=now - SLOT_LIFETIME,
            )
        if not granted:
            return self._refuse(ctx, "resource-constraint",
                                f"upload quota reached: {self.settings.quota_per_user} bytes per user")
        url = f"{self.base_url}/upload/{folder}/{quote(filename, safe='')}"
        slot = make(NS_UPLOAD, "slot")
        put = make(NS_UPLOAD, "put", {"url": url})
        put.append(make(NS_UPLOAD, "header", {"name": "Authorization"}, text=f"Bearer {token}"))
        slot.append(put)
        slot.append(make(NS_UPLOAD, "get", {"url": url}))
        ctx.origin.send(iq_result(ctx.stanza, slot))
        # The folder stays out of the log: it is what keeps the file private.
        self.log.debug("slot for %s (%s bytes) granted to %s", filename, size, ctx.origin.bare)
        return True

    def _kept_since(self, now: float) -> float | None:
        """Upload time of the oldest file still kept (None: files never expire)."""
        days = self.settings.expiry_days
        return now - days * 86400 if days else None

    # --- HTTP -------------------------------------------------------------------------------

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if request.method == hdrs.METH_OPTIONS:
            # CORS preflight; the headers come from _cors.
            return web.Response(status=204)
        if request.method not in (hdrs.METH_PUT, hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "HEAD", "OPTIONS"])
        if not self.serving:
            raise web.HTTPForbidden(text="file transfer is disabled")
        # Whatever prefix a proxy in front keeps, the file is named by the last two segments.
        parts = request.rel_url.parts
        rec = await self.uploads.by_path(f"{parts[-2]}/{parts[-1]}") if len(parts) >= 3 else None
        if request.method == hdrs.METH_PUT:
            return await self._put(request, rec)
        return await self._get(rec)

    async def _put(self, request: web.Request, rec: UploadRecord | None) -> web.StreamResponse:
        if rec is None:
            raise web.HTTPForbidden(text="no such upload slot")
        offered = request.headers.get(hdrs.AUTHORIZATION, "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {rec.token}".encode()):
            raise web.HTTPForbidden(text="the slot's Authorization header is missing or wrong")
        if rec.uploaded_at is not None or rec.id in self._receiving:
            raise web.HTTPConflict(text="this slot has been used already")
        if time.time() > rec.created_at + SLOT_LIFETIME:
            raise web.HTTPForbidden(text="this slot has expired; ask for a new one")
        length = request.content_length
        if length is None:
            raise web.HTTPLengthRequired(text=f"send Content-Length: {rec.size}")
        if length > rec.size:
            raise web.HTTPRequestEntityTooLarge(rec.size, length,
                                                text=f"the slot is for {rec.size} bytes")
        if length != rec.size:
            raise web.HTTPBadRequest(text=f"the slot is for {rec.size} bytes, not {length}")
        sent_type = request.headers.get(hdrs.CONTENT_TYPE)
        if sent_type is not None and media_type(sent_type) != media_type(rec.content_type):
            raise web.HTTPUnsupportedMediaType(text=f"the slot is for {rec.content_type}")
        if not _FOLDER_RE.fullmatch(rec.path.partition("/")[0]):
            raise web.HTTPInternalServerError()
        self._receiving.add(rec.id)
        try:
            await self._receive(request, rec)
        finally:
            self._receiving.discard(rec.id)
        return web.Response(status=201)

    async def _receive(self, request: web.Request, rec: UploadRecord) -> None:
        final = self.root / rec.path
        part, f = await asyncio.to_thread(_open_part, final.parent)
        try:
            received = 0
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > rec.size:
                    raise web.HTTPRequestEntityTooLarge(rec.size, received)
                await asyncio.to_thread(f.write, chunk)
            if received != rec.size:
                raise web.HTTPBadRequest(text=f"received {received} of {rec.size} bytes")
            await asyncio.to_thread(_commit, f, part, final)
        except BaseException:
            await asyncio.to_thread(_discard, f, part)
            raise
        if not await self.uploads.mark_uploaded(rec.id, time.time()):
            # The slot was withdrawn while the bytes arrived; nothing may outlive its row.
            await asyncio.to_thread(_remove_folder, final.parent)
            raise web.HTTPGone(text="this slot is no longer valid")
        self.log.info("%s uploaded %s (%s bytes)", rec.owner, rec.filename, rec.size)

    async def _get(self, rec: UploadRecord | None) -> web.StreamResponse:
        kept_since = self._kept_since(time.time())
        if rec is None or rec.uploaded_at is None or (kept_since is not None and rec.uploaded_at < kept_since):
            raise web.HTTPNotFound(text="no such file")
        headers = {
            hdrs.CONTENT_TYPE: rec.content_type,
            # The type is the uploader's claim: browsers must not second-guess it into HTML.
            "X-Content-Type-Options": "nosniff",
        }
        if not inline_type(rec.content_type):
            headers[hdrs.CONTENT_DISPOSITION] = content_disposition(rec.filename)
            headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return web.FileResponse(self.root / rec.path, headers=headers)

    # --- expiry -----------------------------------------------------------------------------

    async def _expire_periodically(self) -> None:
        while True:
            try:
                await self.expire()
            except Exception:
                self.log.exception("expiring uploads failed; trying again later")
            await asyncio.sleep(EXPIRY_INTERVAL)

    async def expire(self, now: float | None = None) -> int:
        """Delete files older than ``expiry_days`` and slots never used, with their rows;
        returns how many went."""
        now = time.time() if now is None else now
        gone = [r for r in await self.uploads.expired(self._kept_since(now), now - STALE_SLOT_AFTER)
                if r.id not in self._receiving]
        removed: list[int] = []
        for rec in gone:
            folder = rec.path.partition("/")[0]
            if _FOLDER_RE.fullmatch(folder):
                try:
                    await asyncio.to_thread(_remove_folder, self.root / folder)
                except OSError as e:
                    # The row stays so that the next run tries again: no file is forgotten.
                    self.log.error("cannot delete expired upload %s: %s", rec.path, e)
                    continue
            removed.append(rec.id)
        await self.uploads.delete(removed)
        if removed:
            self.log.info("deleted %d expired uploads and unused slots", len(removed))
        return len(removed)


module_class = UploadModule
