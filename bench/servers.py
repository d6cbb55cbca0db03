"""Provisioning, starting and stopping the three servers under test: Parley, Prosody and
ejabberd, each with its own configuration, data directory and PID file on the bench port.

Every server gets the same domain, the same users (``u0``..``uN-1``, password ``p<i>x``),
the same rosters (a ring: each user has the ten users on either side as mutual contacts),
the same self-signed certificate, and plaintext plus STARTTLS on one c2s port. Only the
processes started here are ever signalled, each by its own PID.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tomli_w

DOMAIN = "bench.test"
HOST = "127.0.0.1"
# Not 5222, so that a distribution's own daemon (if its package scripts start one) and the
# benchmark never meet on one port.
PORT = 5322
ITERATIONS = 4096
CONTACTS_EACH_SIDE = 10
# Group chat: every server's MUC service on this host, taking rooms of up to this many
# occupants, with the room history kept small (it is not under test).
MUC_SERVICE = f"conference.{DOMAIN}"
MUC_MAX_OCCUPANTS = 1000
MUC_HISTORY = 5
SERVER_CPU = "0"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Population:
    size: int

    @staticmethod
    def user(i: int) -> str:
        return f"u{i}"

    @staticmethod
    def password(i: int) -> str:
        return f"p{i}x"

    def contacts(self, i: int) -> list[int]:
        n = self.size
        k = min(CONTACTS_EACH_SIDE, (n - 1) // 2)
        return [(i + d) % n for d in range(1, k + 1)] + [(i - d) % n for d in range(1, k + 1)]

    def pairs(self) -> list[tuple[int, int]]:
        """Each mutual contact pair once."""
        n = self.size
        k = min(CONTACTS_EACH_SIDE, (n - 1) // 2)
        return [(i, (i + d) % n) for i in range(n) for d in range(1, k + 1)]


# --- processes ------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (wrappers such as taskset, runuser and su included)."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def port_open(port: int = PORT) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _all_cores() -> None:
    # Provisioning is not measured: let it use the core the load generator is pinned to, too.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def run(cmd: Sequence[str], timeout: float = 600, **kw: object) -> str:
    """A provisioning command; its output is returned, a failure raises with the output."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                       preexec_fn=_all_cores, **kw)  # type: ignore[call-overload]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return str(p.stdout)


def as_user(user: str) -> list[str]:
    """Run as a system user without a PAM session: runuser and su reset the open-files
    limit to 1024, too few for 10,000 clients. HOME is that user's, as a login would set."""
    home = pwd.getpwnam(user).pw_dir
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "env", f"HOME={home}"]


def package_version(name: str) -> str:
    try:
        return run(["dpkg-query", "-W", "-f", "${Version}", name]).strip()
    except (RuntimeError, FileNotFoundError):
        return "not installed"


# --- the shared certificate -------------------------------------------------------------

def make_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN), x509.DNSName("*." + DOMAIN)]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _scram_record(i: int) -> tuple[str, str, str]:
    """(salt, stored_key hex, server_key hex) for user i, as Prosody stores SCRAM-SHA-1."""
    salt = secrets.token_hex(12)
    salted = hashlib.pbkdf2_hmac("sha1", Population.password(i).encode(), salt.encode(), ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    return salt, hashlib.sha1(client_key).hexdigest(), hmac.digest(salted, b"Server Key", "sha1").hex()


# --- the servers ------------------------------------------------------------------------

class BenchServer:
    name = "?"

    def __init__(self, work: Path, population: Population, cert: Path, key: Path):
        self.work = work / self.name.lower()
        self.population = population
        self.cert = cert
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.work / "server.log"

    # to be provided by each server
    def version(self) -> str:
        raise NotImplementedError

    def provision(self) -> dict[str, float]:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def stop_gracefully(self) -> None:
        for pid in self.server_pids():
            _signal(pid, signal.SIGTERM)

    # shared

    def start(self, timeout: float = 90) -> None:
        if port_open():
            raise RuntimeError(f"something already listens on {HOST}:{PORT}; refusing to start {self.name}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *self.command()], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_raise_nofile, start_new_session=True, cwd=self.work)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if port_open():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not open port {PORT} within {timeout} s; see {self.log_path}")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []

    def server_pids(self) -> list[int]:
        """The processes doing the work: the tree's leaves below the wrappers."""
        kids = _children()
        return [p for p in self.pids() if p not in kids] or self.pids()

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        tree = self.pids()
        if self.proc.poll() is None:
            self.stop_gracefully()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in tree:
                    _signal(pid, signal.SIGKILL)
                self.proc.wait(10)
        # A wrapper may exit before its child: make sure nothing of ours lingers.
        for pid in tree:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        self.proc = None
        deadline = time.monotonic() + 10
        while port_open() and time.monotonic() < deadline:
            time.sleep(0.2)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Parley(BenchServer):
    name = "Parley"

    @property
    def config(self) -> Path:
        return self.work / "parley.toml"

    def version(self) -> str:
        import parley

        try:
            commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
            dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"]).strip()
        except (RuntimeError, FileNotFoundError):
            commit, dirty = "unknown", ""
        return f"{parley.__version__} (git {commit}{', with uncommitted changes in src/' if dirty else ''})"

    def _parley(self, *args: str, timeout: float = 1800) -> str:
        return run([sys.executable, "-m", "parley", *args], timeout=timeout)

    def provision(self) -> dict[str, float]:
        shutil.rmtree(self.work, ignore_errors=True)
        t0 = time.perf_counter()
        self._parley("init", str(self.work), "--domain", DOMAIN, "--c2s-port", str(PORT),
                     "--c2s-tls-port", str(PORT + 1))
        with open(self.config, "rb") as f:
            cfg = tomllib.load(f)
        shutil.copy(self.cert, self.work / "certs" / "server.pem")
        shutil.copy(self.key, self.work / "certs" / "server.key")
        cfg["c2s"].update({"require_tls": False, "direct_tls": False, "ping_interval": 86400,
                           "auth_timeout": 300})
        cfg["presence"] = {"max_contacts": 0, "max_watchers": 0}
        cfg["im"] = {"offline": True, "max_offline_per_user": 0}
        cfg["logging"] = {"level": "WARNING"}
        if "muc" in _parley_sections():
            # The chat service is on conference.<domain> by default and makes a room on
            # first join; its default room size (50) would refuse the benchmark's room.
            cfg["muc"] = {"enabled": True, "default_room_size": MUC_MAX_OCCUPANTS,
                          "max_occupants": MUC_MAX_OCCUPANTS, "history_on_join": MUC_HISTORY,
                          "max_history": MUC_HISTORY}
        if "archive" in _parley_sections():
            # Prosody and ejabberd run without a message archive (no mod_mam); so does Parley.
            cfg["archive"] = {"enabled": False}
        with open(self.config, "wb") as f:
            tomli_w.dump(cfg, f)
        pop = self.population
        users_csv, contacts_csv = self.work / "users.csv", self.work / "contacts.csv"
        users_csv.write_text("".join(f"{pop.user(i)}@{DOMAIN},{pop.password(i)}\n" for i in range(pop.size)))
        contacts_csv.write_text("".join(f"{pop.user(a)},{DOMAIN},{pop.user(b)},{DOMAIN},{pop.user(b)},General\n"
                                        for a, b in pop.pairs()))
        t1 = time.perf_counter()
        self._parley("-c", str(self.config), "user", "import", str(users_csv))
        t2 = time.perf_counter()
        out = self._parley("-c", str(self.config), "contacts", "import", str(contacts_csv))
        if f"imported successfully: {len(pop.pairs())}" not in out:
            raise RuntimeError(f"Parley contacts import did not import every pair:\n{out[-2000:]}")
        t3 = time.perf_counter()
        return {"setup_s": t1 - t0, "users_s": t2 - t1, "rosters_s": t3 - t2}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "parley", "-c", str(self.config), "serve"]


def _parley_sections() -> set[str]:
    """The configuration sections this checkout of Parley knows (it refuses unknown ones)."""
    from parley.config import Config

    return set(Config.model_fields)


class Prosody(BenchServer):
    name = "Prosody"

    def version(self) -> str:
        lua = " ".join(run(["lua5.4", "-v"]).split()[:2]) if shutil.which("lua5.4") else "?"
        return f"{package_version('prosody')} (Debian package; {lua})"

    def provision(self) -> dict[str, float]:
        shutil.rmtree(self.work, ignore_errors=True)
        t0 = time.perf_counter()
        data = self.work / "data"
        host_dir = data / DOMAIN.replace(".", "%2e")
        (host_dir / "accounts").mkdir(parents=True)
        (host_dir / "roster").mkdir()
        (self.work / "certs").mkdir()
        shutil.copy(self.cert, self.work / "certs" / "server.pem")
        shutil.copy(self.key, self.work / "certs" / "server.key")
        pop = self.population
        # Writing Prosody's own storage files is seconds; prosodyctl adduser is seconds per user.
        with ProcessPoolExecutor(2) as ex:
            records = list(ex.map(_scram_record, range(pop.size), chunksize=256))
        t1 = time.perf_counter()
        for i, (salt, stored, server) in enumerate(records):
            (host_dir / "accounts" / f"{pop.user(i)}.dat").write_text(
                "return {\n"
                f'\t["iteration_count"] = {ITERATIONS};\n'
                f'\t["salt"] = "{salt}";\n'
                f'\t["server_key"] = "{server}";\n'
                f'\t["stored_key"] = "{stored}";\n'
                "};\n")
            items = "".join(
                f'\t["{pop.user(c)}@{DOMAIN}"] = {{\n'
                '\t\t["groups"] = {\n\t\t\t["General"] = true;\n\t\t};\n'
                f'\t\t["name"] = "{pop.user(c)}";\n'
                '\t\t["subscription"] = "both";\n\t};\n'
                for c in pop.contacts(i))
            (host_dir / "roster" / f"{pop.user(i)}.dat").write_text(
                "return {\n\t[false] = {\n\t\t[\"pending\"] = {};\n\t\t[\"version\"] = 1;\n\t};\n" + items + "};\n")
        (self.work / "prosody.cfg.lua").write_text(self._config())
        for p in (self.work, data, host_dir):
            os.chmod(p, 0o755)
        _chown_tree(self.work, "prosody")
        os.chmod(self.work.parent, 0o755)
        return {"keys_s": t1 - t0, "files_s": time.perf_counter() - t1}

    def _config(self) -> str:
        w = self.work
        return f"""-- Written by the Parley benchmark; see bench/README.md.
pidfile = "{w}/prosody.pid"
data_path = "{w}/data"
log = {{ warn = "{w}/prosody.log" }}
admins = {{ }}
interfaces = {{ "{HOST}" }}
c2s_ports = {{ {PORT} }}
c2s_direct_tls_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "offline"; "posix" }}
modules_disabled = {{ "s2s"; "s2s_auth_certs" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
default_iteration_count = {ITERATIONS}
storage = "internal"
network_settings = {{ tcp_backlog = 1024 }}
VirtualHost "{DOMAIN}"
    ssl = {{ certificate = "{w}/certs/server.pem"; key = "{w}/certs/server.key" }}
-- Group chat: no occupant limit (mod_muc has none unless a limits module is loaded); rooms
-- open at once (no locking until configured); small history.
Component "{MUC_SERVICE}" "muc"
    muc_room_locking = false
    restrict_room_creation = false
    max_history_messages = {MUC_HISTORY}
    muc_room_default_history_length = {MUC_HISTORY}
    muc_room_default_persistent = false
"""

    def command(self) -> list[str]:
        return [*as_user("prosody"), "prosody", "--config", str(self.work / "prosody.cfg.lua"), "-F"]


class Ejabberd(BenchServer):
    name = "ejabberd"
    node = "parleybench@localhost"
    dist_port = 5390

    def version(self) -> str:
        otp = "?"
        if shutil.which("erl"):
            otp = run(["erl", "-noshell", "-eval",
                       'io:format("~s", [erlang:system_info(otp_release)]), halt().']).strip()
        return f"{package_version('ejabberd')} (Debian package; Erlang/OTP {otp})"

    def _ctl(self, *args: str, timeout: float = 1800) -> str:
        return run([*as_user("ejabberd"), "ejabberdctl", "--config-dir", str(self.work / "conf"), "--spool", str(self.work / "spool"),
                    # The import of 10,000 users outlasts ejabberdctl's own 60 s RPC timeout.
                    "--logs", str(self.work / "logs"), "--no-timeout", *args], timeout=timeout)

    def provision(self) -> dict[str, float]:
        shutil.rmtree(self.work, ignore_errors=True)
        t0 = time.perf_counter()
        conf = self.work / "conf"
        for d in (conf, self.work / "spool", self.work / "logs", self.work / "certs"):
            d.mkdir(parents=True)
        (self.work / "certs" / "server.pem").write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        (conf / "ejabberd.yml").write_text(self._config())
        (conf / "ejabberdctl.cfg").write_text(
            f'ERLANG_NODE={self.node}\n'
            # A fixed distribution port means no epmd daemon is started.
            f'ERL_DIST_PORT={self.dist_port}\n'
            f'EJABBERD_PID_PATH={self.work}/ejabberd.pid\n'
            'ERL_MAX_PORTS=65536\n'
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\n')
        (conf / "inetrc").write_text('{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n')
        pop = self.population
        # XEP-0227 import: users and rosters in one command (ejabberdctl per item is slow).
        xml = ["<?xml version='1.0' encoding='UTF-8'?>\n",
               "<server-data xmlns='urn:xmpp:pie:0'>\n", f"<host jid='{DOMAIN}'>\n"]
        for i in range(pop.size):
            xml.append(f"<user name='{pop.user(i)}' password='{pop.password(i)}'>"
                       "<query xmlns='jabber:iq:roster'>")
            xml.extend(f"<item jid='{pop.user(c)}@{DOMAIN}' name='{pop.user(c)}' subscription='both'>"
                       "<group>General</group></item>" for c in pop.contacts(i))
            xml.append("</query></user>\n")
        xml.append("</host>\n</server-data>\n")
        piefxis = self.work / "users.xml"
        piefxis.write_text("".join(xml))
        _chown_tree(self.work, "ejabberd")
        os.chmod(self.work.parent, 0o755)
        os.chmod(self.work, 0o755)
        t1 = time.perf_counter()
        self.start()
        try:
            self._ctl("import_piefxis", str(piefxis))
            t2 = time.perf_counter()
            registered = self._ctl("registered_users", DOMAIN).split()
            if len(registered) != pop.size:
                raise RuntimeError(f"ejabberd has {len(registered)} users after the import, not {pop.size}")
        finally:
            self.stop()
        return {"setup_s": t1 - t0, "import_s": t2 - t1}

    def _config(self) -> str:
        w = self.work
        return f"""# Written by the Parley benchmark; see bench/README.md.
hosts:
  - {DOMAIN}
loglevel: warning
log_rotate_count: 0
certfiles:
  - {w}/certs/server.pem
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha
max_fsm_queue: 100000
listen:
  -
    port: {PORT}
    ip: "{HOST}"
    module: ejabberd_c2s
    starttls: true
    starttls_required: false
    max_stanza_size: 262144
    shaper: none
    access: c2s
    backlog: 1024
shaper: {{}}
shaper_rules: {{}}
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  register:
    deny: all
  muc_create:
    allow: local
modules:
  mod_roster:
    versioning: true
  mod_offline: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_admin_extra: {{}}
  mod_muc:
    hosts:
      - {MUC_SERVICE}
    access: all
    access_create: muc_create
    access_persistent: muc_create
    access_admin: none
    # Service-wide and per-room occupant limits (both default to 200); presence is
    # broadcast up to max_users_presence occupants (default 1000), kept above the room.
    max_users: {MUC_MAX_OCCUPANTS}
    max_users_presence: {2 * MUC_MAX_OCCUPANTS}
    history_size: {MUC_HISTORY}
    min_message_interval: 0
    min_presence_interval: 0
    default_room_options:
      max_users: {MUC_MAX_OCCUPANTS}
      persistent: false
      mam: false
      allow_subscription: false
"""

    def command(self) -> list[str]:
        return [*as_user("ejabberd"), "ejabberdctl", "--config-dir", str(self.work / "conf"),
                "--spool", str(self.work / "spool"), "--logs", str(self.work / "logs"), "foreground"]

    def stop_gracefully(self) -> None:
        # The VM's own stop: the node is ours by name and distribution port, not a guess.
        try:
            self._ctl("stop", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired):
            super().stop_gracefully()


SERVERS: dict[str, type[BenchServer]] = {"parley": Parley, "prosody": Prosody, "ejabberd": Ejabberd}


__all__ = ["DOMAIN", "HOST", "MUC_MAX_OCCUPANTS", "MUC_SERVICE", "PORT", "SERVERS", "BenchServer", "Ejabberd", "Parley", "Population",
           "Prosody", "make_certificate"]
