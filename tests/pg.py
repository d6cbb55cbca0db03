"""A throwaway PostgreSQL server for the tests: its own data directory, a free loopback port,
trust authentication, stopped by its own postmaster PID and removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SUPERUSER = "postgres"
DATABASE = "parley"
# Each PostgreSQL binary exits after this; a hung server must not hang the test session.
COMMAND_TIMEOUT = 120


class PgUnavailable(Exception):
    """The PostgreSQL server binaries are not installed."""


class PgStartFailed(Exception):
    """initdb or the server itself failed; the message carries the server log."""


def find_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres live: $PARLEY_PG_BIN, Debian's newest, or $PATH."""
    override = os.environ.get("PARLEY_PG_BIN")
    if override:
        candidates = [Path(override)]
    else:
        candidates = [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                              key=_version_key, reverse=True)]
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for d in candidates:
        if all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        + (f"$PARLEY_PG_BIN={override}" if override else "/usr/lib/postgresql/*/bin or $PATH")
        + "; install them (Debian: apt-get install postgresql) or set PARLEY_SKIP_PG=1 to skip "
        "the PostgreSQL tests"
    )


def _version_key(path: str) -> tuple[int, ...]:
    part = Path(path).parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit()) or (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One running PostgreSQL server; ``url`` is its ``parley`` database."""

    def __init__(self, bin_dir: Path, root: Path, port: int, as_user: str | None):
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sock"
        self.log = root / "server.log"
        self.port = port
        self.as_user = as_user
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    # --- running the binaries --------------------------------------------------------------

    def _server_cmd(self, binary: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / binary), *args]
        # PostgreSQL refuses to run as root, so the server side runs as the postgres account.
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def _client_cmd(self, binary: str, *args: str) -> list[str]:
        return [str(self.bin_dir / binary), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", SUPERUSER, *args]

    def _run(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # LC_ALL=C keeps initdb from tripping over a locale the container does not have.
        env = {**os.environ, "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"}
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              env=env, check=False, cwd=self.root)

    def _check(self, cmd: Sequence[str], what: str) -> None:
        res = self._run(cmd)
        if res.returncode != 0:
            raise PgStartFailed(f"{what} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                                f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"

    # --- life cycle --------------------------------------------------------------------------

    def init(self) -> None:
        self._check(self._server_cmd(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C",
            # Only initdb's own flush of the fresh cluster is skipped; the server keeps fsync on.
            "--no-sync",
        ), "initdb")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(
                "\n# throwaway test server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        self._check(self._server_cmd(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
        ), "pg_ctl start")
        self.pid = self._postmaster_pid()
        self._check(self._client_cmd("createdb", DATABASE), f"createdb {DATABASE}")

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.strip().isdigit() else None

    def stop(self) -> None:
        """Stop this server (and only it) and remove its directory."""
        try:
            if self.pid is not None:
                res = self._run(self._server_cmd("pg_ctl", "stop", "-m", "fast", "-w", "-t", "60",
                                                 "-D", str(self.data)))
                if res.returncode != 0:
                    self._kill_postmaster()
        finally:
            self.pid = None
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        pid = self.pid
        if pid is None:
            return
        # SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes its children with it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # --- databases --------------------------------------------------------------------------

    def fresh_database(self, name: str) -> str:
        """Create an empty database ``name`` on this server and return its URL."""
        self._check(self._client_cmd("createdb", name), f"createdb {name}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        # --force ends sessions a failed test left behind, so the drop never blocks.
        self._check(self._client_cmd("dropdb", "--force", "--if-exists", name), f"dropdb {name}")


def start_server(bin_dir: Path | None = None, attempts: int = 3) -> PgServer:
    """Start a new server; raises PgUnavailable without binaries, PgStartFailed otherwise."""
    bin_dir = bin_dir or find_bin_dir()
    as_user = SUPERUSER if os.geteuid() == 0 else None
    last: PgStartFailed | None = None
    for _ in range(attempts):
        root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        # The postgres account has to reach its directories inside our temp dir.
        root.chmod(0o755)
        srv = PgServer(bin_dir, root, free_port(), as_user)
        srv.sockets.mkdir(mode=0o700)
        if as_user:
            try:
                pw = pwd.getpwnam(as_user)
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PgUnavailable(
                    f"running as root needs a {as_user!r} system account to run PostgreSQL as"
                ) from None
            os.chown(srv.sockets, pw.pw_uid, pw.pw_gid)
            srv.data.mkdir(mode=0o700)
            os.chown(srv.data, pw.pw_uid, pw.pw_gid)
            srv.log.touch()
            os.chown(srv.log, pw.pw_uid, pw.pw_gid)
        try:
            srv.init()
            srv.start()
            return srv
        except (PgStartFailed, subprocess.TimeoutExpired) as e:
            # Most often another process took the port between free_port() and the bind.
            last = e if isinstance(e, PgStartFailed) else PgStartFailed(str(e))
            srv.pid = srv.pid or srv._postmaster_pid()
            srv.stop()
    assert last is not None
    raise last
