"""The ``parley`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import click
import tomli_w

from parley import __version__, gcpolicy
from parley.accounts import AccountError, derive_all, parse_user_jid, set_password
from parley.certs import certificate_names, self_signed
from parley.config import Config, ConfigError, from_dict, load
from parley.domains import normalise_domain, validate_domain
from parley.storage.db import Database, StorageUnavailable
from parley.storage.repos import NoSuchUser, Repos, UserExists

T = TypeVar("T")
DEFAULT_CONFIG = "parley.toml"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def fail(msg: str, code: int = 1) -> None:
    click.secho(msg, fg="red", err=True)
    sys.exit(code)


class Ctx:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load(self.config_path)
            except ConfigError as e:
                click.secho(f"configuration {self.config_path} is invalid:", fg="red", err=True)
                for p in e.problems:
                    click.secho(f"  {p}", fg="red", err=True)
                sys.exit(2)
        return self._config

    def hosts(self, repos_domains: list[tuple[str, str]]) -> set[str]:
        return {self.config.server.domain, *(d for d, _ in repos_domains)}


async def with_repos(cfg: Config, fn: Callable[[Repos], Awaitable[T]]) -> T:
    db = Database(cfg.storage_url())
    try:
        await db.migrate()
        return await fn(Repos(db))
    except StorageUnavailable as e:
        fail(f"storage {cfg.storage.url} is unavailable: {e}")
        raise
    finally:
        await db.close()


@click.group()
@click.version_option(__version__, prog_name="parley")
@click.option("-c", "--config", "config_path", default=lambda: os.environ.get("PARLEY_CONFIG", DEFAULT_CONFIG),
              show_default="parley.toml or $PARLEY_CONFIG", help="Configuration file.")
@click.pass_context
def main(ctx: click.Context, config_path: str) -> None:
    """Parley: an on-premises enterprise IM and Presence server (XMPP)."""
    ctx.obj = Ctx(config_path)


# --- init / check / serve ----------------------------------------------------------------------


def write_initial(directory: Path, domain: str, c2s_port: int, c2s_tls_port: int, force: bool = False) -> Path:
    problems = validate_domain(domain)
    if problems:
        raise click.BadParameter("; ".join(problems), param_hint="--domain")
    domain = normalise_domain(domain)
    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / "parley.toml"
    if cfg_path.exists() and not force:
        raise click.ClickException(f"{cfg_path} exists already (use --force to overwrite)")
    data = {
        "server": {"domain": domain, "data_dir": "."},
        "c2s": {"host": "127.0.0.1", "port": c2s_port, "tls_port": c2s_tls_port},
        "tls": {"cert": "certs/server.pem", "key": "certs/server.key"},
        "storage": {"url": "sqlite:///parley.db"},
        # Clients fetch uploads by the domain's name, which the certificate carries.
        "upload": {"host": "127.0.0.1", "port": 5280, "public_url": f"https://{domain}:5280"},
    }
    cfg = from_dict(data, directory.resolve())
    cfg_path.write_text("# Parley configuration; see docs/configuration.md for every setting.\n" + tomli_w.dumps(data))
    cert, key = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    if force or not cert.exists():
        self_signed([domain], cert, key)
    _run(with_repos(cfg, lambda r: asyncio.sleep(0)))
    return cfg_path


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", required=True, help="The default IM domain (users are user@DOMAIN).")
@click.option("--c2s-port", default=5222, show_default=True, type=click.IntRange(0, 65535))
@click.option("--c2s-tls-port", default=5223, show_default=True, type=click.IntRange(0, 65535))
@click.option("--force", is_flag=True, help="Overwrite an existing configuration and certificate.")
def init(directory: Path, domain: str, c2s_port: int, c2s_tls_port: int, force: bool) -> None:
    """Write DIRECTORY/parley.toml, a self-signed certificate and an empty database."""
    path = write_initial(directory, domain, c2s_port, c2s_tls_port, force)
    click.echo(f"wrote {path}; start the server with: parley -c {path} serve")


@main.command()
@click.pass_obj
def check(obj: Ctx) -> None:
    """Validate the configuration and print every problem."""
    cfg = obj.config
    problems: list[str] = []
    cert, key = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    if not cert.exists():
        problems.append(f"tls.cert = {cfg.tls.cert!r}: file {cert} does not exist")
    if not key.exists():
        problems.append(f"tls.key = {cfg.tls.key!r}: file {key} does not exist")
    if cert.exists():
        try:
            names = certificate_names(cert)
        except ValueError as e:
            problems.append(f"tls.cert = {cfg.tls.cert!r}: not a PEM certificate ({e})")
        else:
            if cfg.server.domain not in names and f"*.{cfg.server.domain}" not in names:
                problems.append(f"tls.cert = {cfg.tls.cert!r}: does not name {cfg.server.domain} (names: {', '.join(names)})")
    if cfg.c2s.port and cfg.c2s.port == cfg.c2s.tls_port:
        problems.append(f"c2s.tls_port = {cfg.c2s.tls_port}: the same as c2s.port")

    async def storage(repos: Repos) -> None:
        domains = await repos.domains.list()
        for name, _ in domains:
            if cert.exists() and name not in certificate_names(cert) and f"*.{name}" not in certificate_names(cert):
                problems.append(f"domain {name}: the certificate does not name it")

    db = Database(cfg.storage_url())

    async def probe() -> None:
        try:
            await db.migrate()
            await storage(Repos(db))
        except StorageUnavailable as e:
            problems.append(f"storage.url = {cfg.storage.url!r}: cannot be used ({e})")
        finally:
            await db.close()

    _run(probe())
    if problems:
        for p in problems:
            click.secho(p, fg="red", err=True)
        sys.exit(2)
    click.echo(f"{obj.config_path}: OK")


def serve_config(cfg: Config) -> None:
    from parley.logs import setup_logging
    from parley.server import Server

    setup_logging(cfg.logging.level)

    async def go() -> None:
        server = Server(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except StorageUnavailable as e:
            fail(f"storage {cfg.storage.url} is unavailable: {e}")
        except OSError as e:
            fail(f"cannot start: {e}")
        gcpolicy.settle_after_start()
        collector = asyncio.get_running_loop().create_task(gcpolicy.collect_on_a_clock())
        logging.getLogger("parley").info("Parley %s serving %s", __version__, ", ".join(sorted(server.hosts)))
        await stop.wait()
        collector.cancel()
        logging.getLogger("parley").info("stopping")
        await server.stop()

    _run(go())


@main.command()
@click.pass_obj
def serve(obj: Ctx) -> None:
    """Run the server in the foreground until SIGTERM or SIGINT."""
    serve_config(obj.config)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="data")
@click.option("--domain", default="localhost", show_default=True)
def demo(directory: Path, domain: str) -> None:
    """Set up DIRECTORY once (configuration, certificate, demo accounts) and serve it."""
    cfg_path = directory / "parley.toml"
    if not cfg_path.exists():
        write_initial(directory, domain, 5222, 5223)
    cfg = load(cfg_path)
    accounts = directory / "demo-accounts.txt"
    if not accounts.exists():
        users = [(f"{u}@{cfg.server.domain}", secrets.token_urlsafe(9)) for u in ("alice", "bob", "carol")]

        async def create(repos: Repos) -> None:
            for jid, pw in users:
                try:
                    await repos.users.add(jid, cfg.server.domain, derive_all(pw))
                except UserExists:
                    await repos.users.set_credentials(jid, derive_all(pw))

        _run(with_repos(cfg, create))
        accounts.write_text("".join(f"{j} {p}\n" for j, p in users))
        accounts.chmod(0o600)
    click.secho(f"Parley demo server for {cfg.server.domain}", bold=True)
    click.echo(f"  clients: {cfg.c2s.host} port {cfg.c2s.port} (STARTTLS) and {cfg.c2s.tls_port} (direct TLS)")
    click.echo(f"  the certificate is self-signed: {cfg.path(cfg.tls.cert)}")
    click.echo("  demo accounts (JID password):")
    for line in accounts.read_text().splitlines():
        click.echo(f"    {line}")
    if cfg.muc.enabled and cfg.im.enabled:
        click.echo(f"  group chat: rooms on {', '.join(cfg.muc.aliases(cfg.server))}")
    click.echo("  stop with Ctrl-C")
    serve_config(cfg)


# --- users -----------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage user accounts."""


def _user_op(obj: Ctx, jid: str, op: Callable[[Repos, str], Awaitable[None]], done: str) -> None:
    cfg = obj.config

    async def go(repos: Repos) -> None:
        hosts = obj.hosts(await repos.domains.list())
        try:
            parsed = parse_user_jid(jid, hosts)
            await op(repos, str(parsed))
        except AccountError as e:
            fail(str(e))
        except UserExists:
            fail(f"{jid} exists already")
        except NoSuchUser:
            fail(f"no such user {jid}")

    _run(with_repos(cfg, go))
    click.echo(done)


@user.command("add")
@click.argument("jid")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.pass_obj
def user_add(obj: Ctx, jid: str, password: str) -> None:
    """Create an account."""
    async def op(repos: Repos, j: str) -> None:
        await repos.users.add(j, j.rpartition("@")[2], derive_all(password))
    _user_op(obj, jid, op, f"created {jid}")


@user.command("delete")
@click.argument("jid")
@click.pass_obj
def user_delete(obj: Ctx, jid: str) -> None:
    """Delete an account with its roster, offline messages and stored data."""
    _user_op(obj, jid, lambda r, j: r.users.delete(j), f"deleted {jid}")


@user.command("passwd")
@click.argument("jid")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.pass_obj
def user_passwd(obj: Ctx, jid: str, password: str) -> None:
    """Change an account's password."""
    async def op(repos: Repos, j: str) -> None:
        from parley.xmpp.jid import JID

        await set_password(repos, JID.parse(j), password)
    _user_op(obj, jid, op, f"changed the password of {jid}")


@user.command("disable")
@click.argument("jid")
@click.pass_obj
def user_disable(obj: Ctx, jid: str) -> None:
    """Clear the user's "IM and Presence enabled" flag: they can no longer sign in."""
    _user_op(obj, jid, lambda r, j: r.users.set_enabled(j, False), f"disabled {jid}")


@user.command("enable")
@click.argument("jid")
@click.pass_obj
def user_enable(obj: Ctx, jid: str) -> None:
    """Set the user's "IM and Presence enabled" flag."""
    _user_op(obj, jid, lambda r, j: r.users.set_enabled(j, True), f"enabled {jid}")


@user.command("list")
@click.option("--domain", default=None)
@click.pass_obj
def user_list(obj: Ctx, domain: str | None) -> None:
    """List accounts."""
    users = _run(with_repos(obj.config, lambda r: r.users.list(domain)))
    for u in users:
        click.echo(f"{u.jid}\t{'enabled' if u.enabled else 'disabled'}")
    click.echo(f"{len(users)} users", err=True)


@user.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10000))
@click.pass_obj
def user_import(obj: Ctx, csv_file: Any, batch: int) -> None:
    """Create users in bulk from `jid,password` lines."""
    from parley.bulk.user_import import import_users

    result = _run(with_repos(obj.config, lambda r: import_users(r, obj.config, csv_file, batch)))
    click.echo(result.render())
    if result.bad:
        sys.exit(1)


@user.command("policy")
@click.argument("jid")
@click.option("--default", "default", type=click.Choice(["allow", "block", "server"]), default=None,
              help="The user's default policy (server = the configured default).")
@click.option("--auto-approve/--no-auto-approve", default=None, help="Approve subscription requests without asking.")
@click.option("--allow", multiple=True, help="A JID or domain allowed to see the user (repeatable).")
@click.option("--block", multiple=True, help="A JID or domain that always sees the user unavailable (repeatable).")
@click.option("--unlist", multiple=True, help="Remove a JID or domain from both lists (repeatable).")
@click.pass_obj
def user_policy(obj: Ctx, jid: str, default: str | None, auto_approve: bool | None, allow: tuple[str, ...],
                block: tuple[str, ...], unlist: tuple[str, ...]) -> None:
    """Show or change a user's authorization policy (allow and block lists, default)."""
    from parley.xmpp.jid import JID, InvalidJID

    def entry(value: str) -> str:
        try:
            return str(JID.parse(value))
        except InvalidJID as e:
            fail(f"{value!r} is not a JID or domain: {e}")
            raise

    allow_e, block_e, unlist_e = [entry(v) for v in allow], [entry(v) for v in block], [entry(v) for v in unlist]

    async def go(repos: Repos) -> tuple[dict[str, set[str]], str | None, bool | None]:
        owner = str(parse_user_jid(jid, obj.hosts(await repos.domains.list())))
        if await repos.users.get(owner) is None:
            raise NoSuchUser(owner)
        lists, cur_default, cur_auto = await repos.policy.load(owner)
        if default is not None or auto_approve is not None:
            new_default = cur_default if default is None else (None if default == "server" else default)
            new_auto = cur_auto if auto_approve is None else auto_approve
            await repos.policy.set_settings(owner, new_default, new_auto)
        for lst, entries in (("allow", allow_e), ("block", block_e)):
            if entries:
                await repos.policy.remove(owner, "block" if lst == "allow" else "allow", entries)
                await repos.policy.add(owner, lst, entries)
        if unlist_e:
            await repos.policy.remove(owner, "allow", unlist_e)
            await repos.policy.remove(owner, "block", unlist_e)
        return await repos.policy.load(owner)

    try:
        lists, cur_default, cur_auto = _run(with_repos(obj.config, go))
    except AccountError as e:
        fail(str(e))
        return
    except NoSuchUser:
        fail(f"no such user {jid}")
        return
    auth = obj.config.authorization
    click.echo(f"default policy: {cur_default or auth.default_policy}{'' if cur_default else ' (server default)'}")
    auto = auth.auto_approve if cur_auto is None else cur_auto
    click.echo(f"auto-approve: {'on' if auto else 'off'}{'' if cur_auto is not None else ' (server default)'}")
    click.echo("allow: " + (", ".join(sorted(lists.get("allow", ()))) or "-"))
    click.echo("block: " + (", ".join(sorted(lists.get("block", ()))) or "-"))
    click.echo("(a running server applies the change at the user's next sign-in)", err=True)


# --- contacts ----------------------------------------------------------------------------------------


@main.group()
def contacts() -> None:
    """Bulk contact list tools in the seed's CSV format."""


@contacts.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result log to this file.")
@click.pass_obj
def contacts_import(obj: Ctx, csv_file: Any, log_path: Path | None) -> None:
    """Import contacts (userid,user domain,contact id,contact domain,nickname,group) as
    mutual subscriptions."""
    from parley.bulk.contact_import import import_contacts

    report = _run(with_repos(obj.config, lambda r: import_contacts(r, obj.config, csv_file)))
    text = report.render()
    click.echo(text)
    if log_path:
        log_path.write_text(text)
    if report.internal_errors or report.unprocessed:
        sys.exit(1)


@contacts.command("export")
@click.option("--output", "-o", type=click.File("w"), default="-")
@click.option("--user", "user_jid", default=None, help="Only this user's contacts.")
@click.option("--domain", default=None, help="Only users of this domain.")
@click.pass_obj
def contacts_export(obj: Ctx, output: Any, user_jid: str | None, domain: str | None) -> None:
    """Export contact lists as userid,user domain,contact id,contact domain,nickname,group."""
    from parley.bulk.contact_import import export_contacts

    n = _run(with_repos(obj.config, lambda r: export_contacts(r, output, user_jid, domain)))
    click.echo(f"exported {n} contacts", err=True)


# --- domains -----------------------------------------------------------------------------------------


@main.group()
def domain() -> None:
    """Hosted IM domains (SPEC C7)."""


@domain.command("add")
@click.argument("name")
@click.pass_obj
def domain_add(obj: Ctx, name: str) -> None:
    """Host another IM domain."""
    problems = validate_domain(name.strip())
    if problems:
        fail(f"{name!r} is not a valid domain: " + "; ".join(problems))
    name = normalise_domain(name)
    cfg = obj.config
    if name == cfg.server.domain:
        fail(f"{name} is the default domain and is always hosted")

    async def go(repos: Repos) -> bool:
        return await repos.domains.add(name)

    if not _run(with_repos(cfg, go)):
        fail(f"{name} is hosted already")
    cert = cfg.path(cfg.tls.cert)
    if cert.exists() and name not in certificate_names(cert):
        click.secho(f"note: the certificate {cert} does not name {name}; clients will refuse it until it does",
                    fg="yellow", err=True)
    click.echo(f"added {name} (restart the server to serve it)")


@domain.command("list")
@click.pass_obj
def domain_list(obj: Ctx) -> None:
    """List hosted domains: admin-managed, or system-managed when users live in them."""
    cfg = obj.config

    async def go(repos: Repos) -> list[tuple[str, str, int]]:
        rows = [(cfg.server.domain, "default")] + await repos.domains.list()
        return [(n, kind, await repos.users.count_in_domain(n)) for n, kind in rows]

    for name, kind, n in _run(with_repos(cfg, go)):
        managed = "system-managed" if n else "admin-managed"
        click.echo(f"{name}\t{managed}{' (default)' if kind == 'default' else ''}\t{n} users")


@domain.command("delete")
@click.argument("name")
@click.pass_obj
def domain_delete(obj: Ctx, name: str) -> None:
    """Stop hosting a domain; refused while users live in it."""
    name = normalise_domain(name)
    cfg = obj.config
    if name == cfg.server.domain:
        fail(f"{name} is the default domain and cannot be deleted")

    async def go(repos: Repos) -> str | None:
        n = await repos.users.count_in_domain(name)
        if n:
            return f"{name} is system-managed: {n} users have addresses in it"
        if not await repos.domains.delete(name):
            return f"{name} is not a hosted domain"
        return None

    err = _run(with_repos(cfg, go))
    if err:
        fail(err)
    click.echo(f"deleted {name}")


def pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=max(1, (os.cpu_count() or 1)))


if __name__ == "__main__":
    main()
