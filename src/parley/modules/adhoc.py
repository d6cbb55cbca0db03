"""Ad-hoc commands (XEP-0050) with data forms (XEP-0004), and the service administration
commands of XEP-0133 for the accounts in ``[server] admins``.

Commands are addressed to the server (a hosted domain). Other modules add their own with
:meth:`AdhocModule.register`. A command runs in a session the server names
(``sessionid``); each step answers either with a form to fill in (status ``executing``)
or with the outcome (``completed``). Sessions belong to the full JID that started them and
are forgotten after ``SESSION_TTL`` seconds of silence.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.accounts import AccountError, create_user, parse_user_jid, set_password
from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.storage.repos import NoSuchUser, UserExists
from parley.xmpp.caps import Identity
from parley.xmpp.dataforms import Field, FormValues, build_form, submitted
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, child, error_reply, iq_result, make

if TYPE_CHECKING:
    from parley.server import Server

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"

SESSION_TTL = 600.0
# Open sessions one requester may hold; a client that never completes or cancels
# cannot grow the table without bound.
MAX_SESSIONS_PER_REQUESTER = 16
# XEP-0133 offers these page sizes for user lists.
MAX_ITEMS_CHOICES = ("25", "50", "75", "100", "150", "200", "none")

# --- the command framework -----------------------------------------------------------------


class CommandError(Exception):
    """Ends a command with an iq error: `condition` as in RFC 6120, `text` for the person."""

    def __init__(self, condition: str, text: str | None = None, app: str | None = None):
        super().__init__(text or condition)
        self.condition = condition
        self.text = text
        self.app = app  # a XEP-0050 specific condition (bad-action, bad-sessionid, ...)


@dataclass
class Ask:
    """A step that needs input: the form, the actions allowed next, and the default one."""

    form: Element
    actions: tuple[str, ...] = ("complete",)
    default: str = "complete"
    note: str | None = None


@dataclass
class Done:
    note: str | None = None
    note_type: str = "info"
    form: Element | None = None


@dataclass
class CommandSession:
    sid: str
    node: str
    requester: str  # full JID
    host: str  # the hosted domain the command was sent to
    # Where a multi-step command is, and what it keeps between its steps.
    stage: int = 0
    data: dict[str, object] = field(default_factory=dict)
    allowed: tuple[str, ...] = ("execute",)
    default: str = "execute"
    touched: float = field(default_factory=time.monotonic)


class Command:
    node: str = ""
    name: str = ""
    admin_only: bool = True

    def __init__(self, module: AdhocModule):
        self.module = module
        self.server = module.server

    def allowed(self, requester: JID) -> bool:
        return not self.admin_only or self.module.is_admin(requester)

    async def step(self, session: CommandSession, action: str, values: FormValues | None) -> Ask | Done:
        raise NotImplementedError


class AdminCommand(Command):
    """One XEP-0133 command: a form (or none), then the outcome."""

    fields: tuple[Field, ...] = ()
    title = ""
    instructions: str | None = None

    def form(self) -> Element:
        return build_form("form", self.fields, form_type=NS_ADMIN, title=self.title,
                          instructions=self.instructions)

    async def step(self, session: CommandSession, action: str, values: FormValues | None) -> Ask | Done:
        if not self.fields:
            return await self.run(session, {})
        if values is None:
            if session.stage == 0 and action == "execute":
                session.stage = 1
                return Ask(self.form())
            raise CommandError("bad-request", "submit the form", "bad-payload")
        for f in self.fields:
            if f.required and not any(v.strip() for v in values.get(f.var, ())):
                raise CommandError("bad-request", f"the field {f.var} is required", "bad-payload")
        return await self.run(session, values)

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        raise NotImplementedError

    # --- helpers for the concrete commands ---

    def one(self, values: FormValues, var: str) -> str:
        vs = [v.strip() for v in values.get(var, ()) if v.strip()]
        if len(vs) > 1:
            raise CommandError("bad-request", f"the field {var} takes one value", "bad-payload")
        return vs[0] if vs else ""

    def account(self, text: str) -> JID:
        try:
            return parse_user_jid(text, self.server.hosts)
        except AccountError as e:
            raise CommandError("bad-request", str(e), "bad-payload") from None

    def accounts(self, values: FormValues, var: str) -> list[JID]:
        jids: list[JID] = []
        for v in values.get(var, ()):
            # Clients differ on one value per line or several lines in one value.
            for line in v.splitlines():
                if line.strip():
                    jid = self.account(line.strip())
                    if jid not in jids:
                        jids.append(jid)
        if not jids:
            raise CommandError("bad-request", f"the field {var} is required", "bad-payload")
        return jids

    async def existing(self, jids: Sequence[JID]) -> None:
        missing = [str(j) for j in jids if await self.server.repos.users.get(str(j)) is None]
        if missing:
            raise CommandError("item-not-found", f"no such account: {', '.join(missing)}")

    def end_sessions(self, jid: JID, why: str) -> None:
        for session in self.server.router.sessions.of(str(jid)):
            session.close("not-authorized", why)


ACCOUNTJIDS = Field("accountjids", "jid-multi", "The Jabber ID(s) of the accounts", required=True)


class AddUser(AdminCommand):
    node = f"{NS_ADMIN}#add-user"
    name = "Add a user"
    title = "Adding a user"
    fields = (
        Field("accountjid", "jid-single", "The Jabber ID for the account to be added", required=True),
        Field("password", "text-private", "The password for this account", required=True),
        Field("password-verify", "text-private", "Retype password", required=True),
    )

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        jid = self.account(self.one(values, "accountjid"))
        password = (values.get("password") or [""])[0]
        if password != (values.get("password-verify") or [""])[0]:
            raise CommandError("bad-request", "the passwords do not match", "bad-payload")
        if not password:
            raise CommandError("bad-request", "the password must not be empty", "bad-payload")
        try:
            await create_user(self.server.repos, jid, password)
        except UserExists:
            raise CommandError("conflict", f"{jid} already exists") from None
        return Done(f"{jid} was added")


class DeleteUser(AdminCommand):
    node = f"{NS_ADMIN}#delete-user"
    name = "Delete a user"
    title = "Deleting a user"
    fields = (ACCOUNTJIDS,)

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        jids = self.accounts(values, "accountjids")
        await self.existing(jids)
        for jid in jids:
            try:
                await self.server.repos.users.delete(str(jid))
            except NoSuchUser:
                continue  # deleted meanwhile: the outcome is the same
            self.end_sessions(jid, "the account was deleted")
            await self.server.signals.emit("user-deleted", str(jid))
        return Done(f"deleted: {', '.join(map(str, jids))}")


class DisableUser(AdminCommand):
    node = f"{NS_ADMIN}#disable-user"
    name = "Disable a user"
    title = "Disabling a user"
    fields = (ACCOUNTJIDS,)

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        jids = self.accounts(values, "accountjids")
        await self.existing(jids)
        for jid in jids:
            await self.server.repos.users.set_enabled(str(jid), False)
            self.end_sessions(jid, "the account was disabled")
        return Done(f"disabled: {', '.join(map(str, jids))}")


class ReenableUser(AdminCommand):
    node = f"{NS_ADMIN}#reenable-user"
    name = "Re-enable a user"
    title = "Re-enabling a user"
    fields = (ACCOUNTJIDS,)

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        jids = self.accounts(values, "accountjids")
        await self.existing(jids)
        for jid in jids:
            await self.server.repos.users.set_enabled(str(jid), True)
        return Done(f"re-enabled: {', '.join(map(str, jids))}")


class ChangeUserPassword(AdminCommand):
    node = f"{NS_ADMIN}#change-user-password"
    name = "Change a user's password"
    title = "Changing a user's password"
    fields = (
        Field("accountjid", "jid-single", "The Jabber ID of the account", required=True),
        Field("password", "text-private", "The new password", required=True),
    )

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        jid = self.account(self.one(values, "accountjid"))
        password = (values.get("password") or [""])[0]
        if not password:
            raise CommandError("bad-request", "the password must not be empty", "bad-payload")
        try:
            await set_password(self.server.repos, jid, password)
        except NoSuchUser:
            raise CommandError("item-not-found", f"no such account: {jid}") from None
        return Done(f"the password of {jid} was changed")


def online_users(server: Server, host: str) -> list[str]:
    return sorted(b for b in server.router.sessions.online_users() if b.rpartition("@")[2] == host)


class OnlineUsersNum(AdminCommand):
    node = f"{NS_ADMIN}#get-online-users-num"
    name = "Get the number of online users"

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        n = len(online_users(self.server, session.host))
        return Done(form=build_form("result", [Field("onlineusersnum", label="The number of online users",
                                                     values=(str(n),))], form_type=NS_ADMIN))


class OnlineUsersList(AdminCommand):
    node = f"{NS_ADMIN}#get-online-users-list"
    name = "Get the list of online users"
    title = "Requesting the list of online users"
    fields = (Field("max_items", "list-single", "Maximum number of items to show", options=MAX_ITEMS_CHOICES),)

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        wanted = self.one(values, "max_items") or "none"
        if wanted != "none" and not (wanted.isdigit() and int(wanted) > 0):
            raise CommandError("bad-request", f"max_items must be a positive number or none, not {wanted!r}",
                               "bad-payload")
        jids = online_users(self.server, session.host)
        if wanted != "none":
            jids = jids[: int(wanted)]
        return Done(form=build_form("result", [Field("onlineuserjids", "jid-multi", "The list of all online users",
                                                     values=tuple(jids))], form_type=NS_ADMIN))


class Announce(AdminCommand):
    node = f"{NS_ADMIN}#announce"
    name = "Send an announcement to all online users"
    title = "Making an announcement"
    fields = (
        Field("subject", "text-single", "Subject"),
        Field("announcement", "text-multi", "Announcement", required=True),
    )

    async def run(self, session: CommandSession, values: FormValues) -> Done:
        subject = self.one(values, "subject")
        body = "\n".join(values.get("announcement", ())).strip()
        if not body:
            raise CommandError("bad-request", "the announcement is empty", "bad-payload")
        msg = make(NS_CLIENT, "message", {"from": session.host, "type": "headline"})
        if subject:
            child(msg, NS_CLIENT, "subject").text = subject
        child(msg, NS_CLIENT, "body").text = body
        sent = 0
        for bare in online_users(self.server, session.host):
            for s in self.server.router.sessions.of(bare):
                if s.available:
                    out = make(NS_CLIENT, "message", {**msg.attrib, "to": str(s.jid)}, *msg)
                    s.send(out)
                    sent += 1
        return Done(f"the announcement went to {sent} session(s)")


ADMIN_COMMANDS: tuple[type[AdminCommand], ...] = (
    AddUser, DeleteUser, DisableUser, ReenableUser, ChangeUserPassword,
    OnlineUsersList, OnlineUsersNum, Announce,
)


# --- the module -------------------------------------------------------------------------------


class AdhocModule(Module):
    name = "adhoc"
    server_features = (NS_COMMANDS,)

    def __init__(self, server: Server):
        super().__init__(server)
        self.commands: dict[str, Command] = {}
        self.sessions: dict[tuple[str, str], CommandSession] = {}
        self._ids = itertools.count(1)
        self.admins: set[JID] = set()
        for a in self.config.server.admins:
            try:
                self.admins.add(JID.parse(a).bare)
            except InvalidJID:
                self.log.warning("ignoring admin %r: not a JID", a)

    def register(self, command: Command) -> None:
        self.commands[command.node] = command

    def is_admin(self, jid: JID) -> bool:
        return jid.bare in self.admins

    async def start(self) -> None:
        for cls in ADMIN_COMMANDS:
            self.register(cls(self))
        self.hooks.add(f"iq-set/host/{NS_COMMANDS}", self._execute)
        # Before disco: these nodes are ours; every other node falls through to it.
        self.hooks.add(f"iq-get/host/{NS_DISCO_ITEMS}", self._items, priority=20)
        self.hooks.add(f"iq-get/host/{NS_DISCO_INFO}", self._info, priority=20)
        self.server.signals.connect("session-closed", self._session_closed)

    async def _session_closed(self, session: Session) -> None:
        jid = str(session.jid)
        for key in [k for k in self.sessions if k[0] == jid]:
            del self.sessions[key]

    async def _send(self, ctx: Routed, stanza: Element) -> None:
        if ctx.origin is not None:
            ctx.origin.send(stanza)
        else:
            await self.router.route(stanza)

    async def _reply(self, ctx: Routed, payload: Element) -> None:
        await self._send(ctx, iq_result(ctx.stanza, payload))

    async def _error(self, ctx: Routed, condition: str, text: str | None = None, app: str | None = None) -> None:
        extra = make(NS_COMMANDS, app) if app else None
        await self._send(ctx, error_reply(ctx.stanza, condition, text, app=extra))

    # --- disco -------------------------------------------------------------------------------

    async def _items(self, ctx: Routed) -> bool:
        if ctx.stanza[0].get("node") != NS_COMMANDS:
            return False
        query = make(NS_DISCO_ITEMS, "query", {"node": NS_COMMANDS})
        for cmd in self.commands.values():
            if cmd.allowed(ctx.frm):
                child(query, NS_DISCO_ITEMS, "item", {"jid": str(ctx.to), "node": cmd.node, "name": cmd.name})
        await self._reply(ctx, query)
        return True

    async def _info(self, ctx: Routed) -> bool:
        node = ctx.stanza[0].get("node")
        if node == NS_COMMANDS:
            ident = Identity("automation", "command-list", "", "Commands")
            features: tuple[str, ...] = (NS_DISCO_INFO, NS_DISCO_ITEMS)
        elif node in self.commands:
            cmd = self.commands[node]
            if not cmd.allowed(ctx.frm):
                await self._error(ctx, "forbidden", "this command is for administrators")
                return True
            ident = Identity("automation", "command-node", "", cmd.name)
            features = (NS_COMMANDS, NS_DATA, NS_DISCO_INFO)
        else:
            return False
        query = make(NS_DISCO_INFO, "query", {"node": node})
        child(query, NS_DISCO_INFO, "identity", {"category": ident.category, "type": ident.type, "name": ident.name})
        for var in features:
            child(query, NS_DISCO_INFO, "feature", {"var": var})
        await self._reply(ctx, query)
        return True

    # --- execution -----------------------------------------------------------------------------

    def _prune(self) -> None:
        cutoff = time.monotonic() - SESSION_TTL
        for key in [k for k, s in self.sessions.items() if s.touched < cutoff]:
            del self.sessions[key]

    async def _execute(self, ctx: Routed) -> bool:
        el = ctx.stanza[0]
        node = el.get("node") or ""
        action = el.get("action") or "execute"
        sid = el.get("sessionid")
        requester = str(ctx.frm)
        cmd = self.commands.get(node)
        if cmd is None:
            await self._error(ctx, "item-not-found", f"there is no command {node!r}")
            return True
        if not cmd.allowed(ctx.frm):
            await self._error(ctx, "forbidden", "this command is for administrators")
            return True
        self._prune()
        if action not in ("execute", "next", "prev", "complete", "cancel"):
            await self._error(ctx, "bad-request", f"unknown action {action!r}", "malformed-action")
            return True
        if sid is None:
            if action != "execute":
                await self._error(ctx, "bad-request", f"{action} needs a sessionid", "bad-action")
                return True
            if sum(1 for k in self.sessions if k[0] == requester) >= MAX_SESSIONS_PER_REQUESTER:
                await self._error(ctx, "resource-constraint", "too many open command sessions; complete or cancel some")
                return True
            session = CommandSession(f"{secrets.token_hex(6)}-{next(self._ids)}", node, requester, ctx.to.domain)
        else:
            found = self.sessions.get((requester, sid))
            if found is None or found.node != node:
                await self._error(ctx, "bad-request", "no such command session (it may have expired)", "bad-sessionid")
                return True
            session = found
            if action == "cancel":
                del self.sessions[(requester, sid)]
                await self._reply(ctx, make(NS_COMMANDS, "command",
                                            {"node": node, "sessionid": sid, "status": "canceled"}))
                return True
            if action == "execute":
                action = session.default
            if action not in session.allowed:
                await self._error(ctx, "bad-request", f"{action} is not allowed at this step", "bad-action")
                return True
        try:
            outcome = await cmd.step(session, action, submitted(el))
        except CommandError as e:
            self.sessions.pop((requester, session.sid), None)
            await self._error(ctx, e.condition, e.text, e.app)
            return True
        except Exception:
            # A failing command must not take the requester's stream down with it.
            self.log.exception("command %s failed", node)
            self.sessions.pop((requester, session.sid), None)
            await self._error(ctx, "internal-server-error", "the command failed")
            return True
        out = make(NS_COMMANDS, "command", {"node": node, "sessionid": session.sid})
        if isinstance(outcome, Ask):
            out.set("status", "executing")
            session.allowed = outcome.actions
            session.default = outcome.default
            session.touched = time.monotonic()
            self.sessions[(requester, session.sid)] = session
            actions = child(out, NS_COMMANDS, "actions", {"execute": outcome.default})
            for a in outcome.actions:
                child(actions, NS_COMMANDS, a)
            if outcome.note:
                child(out, NS_COMMANDS, "note", {"type": "info"}).text = outcome.note
            out.append(outcome.form)
        else:
            self.sessions.pop((requester, session.sid), None)
            out.set("status", "completed")
            if outcome.note:
                child(out, NS_COMMANDS, "note", {"type": outcome.note_type}).text = outcome.note
            if outcome.form is not None:
                out.append(outcome.form)
        await self._reply(ctx, out)
        return True


module_class = AdhocModule
