"""Idle connections on one Parley node: how many stay connected, all answering pings, and
the server's memory per connection.

    .venv/bin/python -m bench.idle [--clients 19000] [--idle 15]

One process can hold at most RLIMIT_NOFILE descriptors (20,000 on the machine the
benchmarks ran on, and an unprivileged process cannot raise it), so the default stays below
that for the server and for this client. Users are provisioned straight into the database
with one shared salt, so the clients derive the SCRAM key once; the server's work per
sign-in is the same as with distinct salts. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from parley.config import from_dict
from parley.storage.db import Database
from parley.storage.repos import Repos
from parley.xmpp.sasl import derive_scram_credentials

DOMAIN = "bench.test"
PASSWORD = "idle-pw"
HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>").encode()
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
REPO = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def provision(cfg_path: Path, n: int) -> bytes:
    from parley.config import load

    cfg = load(cfg_path)
    db = Database(cfg.storage_url())
    await db.migrate()
    salt = secrets.token_bytes(16)
    creds = {m: derive_scram_credentials(PASSWORD, m, salt=salt) for m in ("SHA-1", "SHA-256")}
    repos = Repos(db)
    batch = [(f"i{i}@{DOMAIN}", DOMAIN, creds) for i in range(n)]
    for k in range(0, n, 5000):
        await repos.users.add_many(batch[k : k + 5000])
    await db.close()
    return hashlib.pbkdf2_hmac("sha1", PASSWORD.encode(), salt, 4096)


class Client(asyncio.Protocol):
    def __init__(self, user: str, salted: bytes, done: asyncio.Future[bool]):
        self.user = user
        self.salted = salted
        self.done = done
        self.buf = b""
        self.state = "features"
        self.transport: asyncio.Transport | None = None
        self.nonce = secrets.token_urlsafe(12)
        self.pong: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(HEADER)  # type: ignore[attr-defined]

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.state == "features" and b"</stream:features>" in self.buf:
            self.buf = b""
            self.first = f"n={self.user},r={self.nonce}"
            token = base64.b64encode(b"n,," + self.first.encode()).decode()
            self._send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{token}</auth>".encode())
            self.state = "challenge"
        elif self.state == "challenge" and b"</challenge>" in self.buf:
            m = re.search(rb">([^<]+)</challenge>", self.buf)
            assert m
            server_first = base64.b64decode(m.group(1)).decode()
            self.buf = b""
            attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
            without_proof = f"c=biws,r={attrs['r']}"
            auth = f"{self.first},{server_first},{without_proof}".encode()
            client_key = hmac.new(self.salted, b"Client Key", "sha1").digest()
            stored = hashlib.sha1(client_key).digest()
            sig = hmac.new(stored, auth, "sha1").digest()
            proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig, strict=True))).decode()
            final = base64.b64encode(f"{without_proof},p={proof}".encode()).decode()
            self._send(f"<response xmlns='{SASL}'>{final}</response>".encode())
            self.state = "success"
        elif self.state == "success" and (b"</success>" in self.buf or b"<failure" in self.buf):
            if b"<failure" in self.buf:
                self._finish(False)
                return
            self.buf = b""
            self._send(HEADER)
            self.state = "features2"
        elif self.state == "features2" and b"</stream:features>" in self.buf:
            self.buf = b""
            self._send(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            self.state = "bind"
        elif self.state == "bind" and b"</iq>" in self.buf:
            self.buf = b""
            self._send(b"<presence/>")
            self.state = "idle"
            self._finish(True)
        elif self.state == "idle":
            if self.pong is not None and b"id='ping'" in self.buf:
                if not self.pong.done():
                    self.pong.set_result(True)
            self.buf = self.buf[-64:]

    def _finish(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)

    def ping(self) -> asyncio.Future[bool]:
        self.pong = asyncio.get_running_loop().create_future()
        self.buf = b""
        if self.transport is None or self.transport.is_closing():
            self.pong.set_result(False)
            return self.pong
        self._send(f"<iq type='get' id='ping' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>".encode())
        return self.pong

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False)
        if self.pong is not None and not self.pong.done():
            self.pong.set_result(False)


async def run(clients: int, idle: float, port: int, pid: int, salted: bytes) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    base_rss = rss_bytes(pid)
    conns: list[Client] = []
    sem = asyncio.Semaphore(200)
    t0 = time.perf_counter()

    async def one(i: int) -> bool:
        async with sem:
            done: asyncio.Future[bool] = loop.create_future()
            c = Client(f"i{i}", salted, done)
            # Spread over loopback source addresses: one address has ~28,000 ports.
            src = f"127.0.{1 + i // 20000}.{1 + (i // 250) % 250}"
            try:
                await loop.create_connection(lambda: c, "127.0.0.1", port, local_addr=(src, 0))
                ok = await asyncio.wait_for(done, 60)
            except (OSError, TimeoutError):
                return False
            conns.append(c)
            return ok

    results = await asyncio.gather(*(one(i) for i in range(clients)))
    login_s = time.perf_counter() - t0
    connected = sum(results)
    await asyncio.sleep(idle)
    idle_rss = rss_bytes(pid)
    still = sum(1 for c in conns if c.transport is not None and not c.transport.is_closing())
    pongs = await asyncio.gather(*(asyncio.wait_for(c.ping(), 120) for c in conns), return_exceptions=True)
    answered = sum(1 for p in pongs if p is True)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return {
        "clients": clients, "connected": connected, "still_connected_after_idle": still,
        "answered_pings": answered,
        "login_seconds": round(login_s, 1), "idle_seconds": idle,
        "rss_fresh_bytes": base_rss, "rss_idle_bytes": idle_rss,
        "rss_per_connection_kib": round((idle_rss - base_rss) / max(connected, 1) / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=19000)
    ap.add_argument("--idle", type=float, default=15.0, help="seconds idle before measuring")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 100 > hard:
        sys.exit(f"--clients {args.clients} needs more descriptors than this machine allows ({hard})")
    work = Path(tempfile.mkdtemp(prefix="parley-idle-"))
    port = free_port()
    data = {"server": {"domain": DOMAIN}, "c2s": {"port": port, "direct_tls": False, "require_tls": False,
                                                   "ping_interval": 3600.0},
            "storage": {"url": "sqlite:///parley.db"}, "logging": {"level": "WARNING"},
            "archive": {"enabled": False}}
    from_dict(data)  # validate before writing
    import tomli_w

    cfg_path = work / "parley.toml"
    cfg_path.write_text(tomli_w.dumps(data))
    salted = uvloop.run(provision(cfg_path, args.clients))
    env = dict(os.environ)
    server = subprocess.Popen(
        ["taskset", "-c", "0", str(REPO / ".venv/bin/parley"), "-c", str(cfg_path), "serve"],
        env=env, stderr=subprocess.PIPE, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)),
    )
    try:
        import socket

        for _ in range(200):  # bounded wait for the listener
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        os.sched_setaffinity(0, {1})
        result = uvloop.run(run(args.clients, args.idle, port, server.pid, salted))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        if tail:
            print("server said:", *tail, sep="\n  ", file=sys.stderr)
    result["command"] = "python -m bench.idle " + " ".join(sys.argv[1:])
    out = REPO / "bench" / "results" / f"idle-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
