"""Personal Eventing Protocol (XEP-0163): a publish-subscribe service on every account's
bare JID, with the part of XEP-0060 that PEP clients use.

- Owner use cases: publish (nodes are created on first publish, with the publish options
  as their configuration), publish-options preconditions (XEP-0060 7.1.5, which XEP-0223
  private storage relies on), retract, create, configure, default configuration, delete
  and purge. Only the account owner may change its nodes.
- Retrieval: the newest items, a maximum count or named items, as the node's access model
  allows (open, presence, roster, whitelist; presence by default).
- Notifications go to the full JIDs of the owner's available resources and of contacts
  with a 'from' or 'both' subscription whose client asked for the node's events with a
  ``<node>+notify`` feature in its XEP-0115 capabilities. The server learns those features
  with a disco#info query to the client and caches them per verification string, only once
  the string is verified, so one client cannot tell the server what another one wants.
- The last item of each node a client is interested in is sent when that client becomes
  available (send_last_published_item on_sub_and_presence, the default).

Other modules publish and listen through :meth:`Pep.publish`, :meth:`Pep.retract`,
:meth:`Pep.items` and the server signals ``pep-published``, ``pep-retracted``,
``pep-purged`` and ``pep-deleted`` (owner, node, ..., source), where ``source`` names the
module that made the change (None for a client), so that a module can tell its own
changes from the ones it must react to.

Limits: item payloads up to MAX_PAYLOAD_BYTES, at most MAX_ITEMS_CAP items per node and
MAX_NODES nodes per account, node names up to MAX_NODE_NAME characters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, ParseError, fromstring

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.storage.pubsub import ItemRecord, NodeRecord, PubsubRepo
from parley.xmpp.caps import HASHES, NS_CAPS, NS_DATA, Identity, IllFormed, parse_info, verify_ver
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import (
    NS_CLIENT,
    child,
    error_reply,
    iq_result,
    local_name,
    make,
    namespace,
    q,
)
from parley.xmpp.xmlstream import serialize

if TYPE_CHECKING:
    from parley.server import Server

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = f"{NS_PUBSUB}#owner"
NS_EVENT = f"{NS_PUBSUB}#event"
NS_ERRORS = f"{NS_PUBSUB}#errors"
NS_NODE_CONFIG = f"{NS_PUBSUB}#node_config"
NS_PUBLISH_OPTIONS = f"{NS_PUBSUB}#publish-options"
NS_META = f"{NS_PUBSUB}#meta-data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DELAY = "urn:xmpp:delay"

MAX_PAYLOAD_BYTES = 100 * 1024
MAX_ITEMS_CAP = 1000
MAX_NODES = 500
MAX_NODE_NAME = 256
MAX_ITEM_ID = 1023
MAX_TITLE = 1023
# Caps strings remembered; clients share a handful of them, so this is plenty.
CAPS_CACHE_SIZE = 10000
# A client that does not answer the disco#info query within this many seconds is skipped
# and the next client with the same string is asked.
CAPS_QUERY_TIMEOUT = 30.0

ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")

# Configuration fields: stored values are strings, or lists for multi-valued fields.
F_ACCESS = "pubsub#access_model"
F_MAX_ITEMS = "pubsub#max_items"
F_PERSIST = "pubsub#persist_items"
F_SEND_LAST = "pubsub#send_last_published_item"
F_NOTIFY_RETRACT = "pubsub#notify_retract"
F_NOTIFY_DELETE = "pubsub#notify_delete"
F_GROUPS = "pubsub#roster_groups_allowed"
F_TITLE = "pubsub#title"
# Free text the service keeps and shows but does not act on.
TEXT_FIELDS = (F_TITLE, "pubsub#description", "pubsub#type")
# Behaviour this service has and cannot change; accepted when asked for as it is.
FIXED = {
    "pubsub#deliver_notifications": "true",
    "pubsub#deliver_payloads": "true",
    "pubsub#publish_model": "publishers",
    "pubsub#notification_type": "headline",
    "pubsub#presence_based_delivery": "true",
    "pubsub#notify_config": "false",
    "pubsub#notify_sub": "false",
    "pubsub#purge_offline": "false",
}
BOOLEAN_FIELDS = (F_PERSIST, F_NOTIFY_RETRACT, F_NOTIFY_DELETE, "pubsub#deliver_notifications",
                  "pubsub#deliver_payloads", "pubsub#presence_based_delivery", "pubsub#notify_config",
                  "pubsub#notify_sub", "pubsub#purge_offline")

DEFAULT_CONFIG: dict[str, Any] = {
    F_ACCESS: "presence",
    F_MAX_ITEMS: "1",
    F_PERSIST: "true",
    F_SEND_LAST: "on_sub_and_presence",
    F_NOTIFY_RETRACT: "true",
    F_NOTIFY_DELETE: "true",
    F_GROUPS: [],
    F_TITLE: "",
    "pubsub#description": "",
    "pubsub#type": "",
}


class PepError(Exception):
    """A request refused: the stanza error condition, a text and a pubsub#errors condition."""

    def __init__(self, condition: str, text: str | None = None, app: str | None = None,
                 app_attrs: dict[str, str] | None = None, echo: bool = True):
        super().__init__(text or condition)
        self.condition = condition
        self.text = text
        self.app = app
        self.app_attrs = app_attrs or {}
        # Whether the error may carry the request back (not for a refused oversized item).
        self.echo = echo


def _unsupported(feature: str) -> PepError:
    return PepError("feature-not-implemented", f"{feature} is not supported on personal nodes",
                    "unsupported", {"feature": feature})


# --- configuration values -------------------------------------------------------------------------


def _boolean(var: str, value: str) -> str:
    v = value.strip().lower()
    if v in ("1", "true"):
        return "true"
    if v in ("0", "false"):
        return "false"
    raise ValueError(f"{var} must be true or false, not {value!r}")


def normalise(var: str, values: Sequence[str]) -> Any:
    """The stored form of one submitted field; ValueError (with a reason) when it is not
    an option this service supports or the value is out of range."""
    if var == F_GROUPS:
        return sorted({v for v in values if v})
    value = values[0] if values else ""
    if var == F_ACCESS:
        if value not in ACCESS_MODELS:
            raise ValueError(f"the access model {value!r} is not supported; use one of {', '.join(ACCESS_MODELS)}")
        return value
    if var == F_MAX_ITEMS:
        if value.strip().lower() == "max":
            return "max"
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{F_MAX_ITEMS} must be a number or 'max', not {value!r}") from None
        if n < 1:
            raise ValueError(f"{F_MAX_ITEMS} must be at least 1")
        if n > MAX_ITEMS_CAP:
            raise ValueError(f"at most {MAX_ITEMS_CAP} items per node are allowed, not {n}")
        return str(n)
    if var == F_SEND_LAST:
        if value not in SEND_LAST:
            raise ValueError(f"{F_SEND_LAST} must be one of {', '.join(SEND_LAST)}, not {value!r}")
        return value
    if var in TEXT_FIELDS:
        if len(value) > MAX_TITLE:
            raise ValueError(f"{var} is longer than {MAX_TITLE} characters")
        return value
    if var in BOOLEAN_FIELDS:
        value = _boolean(var, value)
    if var in FIXED:
        if value != FIXED[var]:
            raise ValueError(f"{var} is always {FIXED[var]} here")
        return value
    if var in (F_PERSIST, F_NOTIFY_RETRACT, F_NOTIFY_DELETE):
        return value
    raise ValueError(f"the option {var} is not supported")


def max_items(config: dict[str, Any]) -> int:
    value = config.get(F_MAX_ITEMS, DEFAULT_CONFIG[F_MAX_ITEMS])
    if value == "max":
        return MAX_ITEMS_CAP
    try:
        return max(1, min(int(value), MAX_ITEMS_CAP))
    except (TypeError, ValueError):
        return 1


def _effective(var: str, value: Any) -> Any:
    """A value as it behaves, for comparisons: 'max' is the cap."""
    if var == F_MAX_ITEMS:
        return max_items({F_MAX_ITEMS: value})
    return value


def _current(config: dict[str, Any], var: str) -> Any:
    if var in FIXED:
        return FIXED[var]
    return config.get(var, DEFAULT_CONFIG.get(var))


def _flag(config: dict[str, Any], var: str) -> bool:
    return _current(config, var) == "true"


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(DEFAULT_CONFIG)
    out.update(config)
    return out


def read_form(x: Element | None, form_type: str) -> dict[str, list[str]]:
    """The fields of a submitted data form of that FORM_TYPE (none for a missing form)."""
    if x is None:
        return {}
    if x.get("type", "submit") not in ("submit", "result"):
        raise PepError("bad-request", "the form must be of type submit")
    fields: dict[str, list[str]] = {}
    for f in x.findall(q(NS_DATA, "field")):
        var = f.get("var")
        if not var:
            continue
        fields[var] = [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
    declared = fields.pop("FORM_TYPE", None)
    if declared is not None and (declared[:1] or [""])[0] != form_type:
        raise PepError("bad-request", f"the form's FORM_TYPE must be {form_type}", "invalid-options")
    return fields


def config_form(config: dict[str, Any], type_: str = "form") -> Element:
    """The node configuration form (XEP-0060 8.2) with the node's values."""
    cfg = full_config(config)
    x = make(NS_DATA, "x", {"type": type_})
    ft = child(x, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(ft, NS_DATA, "value").text = NS_NODE_CONFIG

    def field_(var: str, ftype: str, label: str, values: Iterable[str], options: Iterable[str] = ()) -> None:
        f = child(x, NS_DATA, "field", {"var": var, "type": ftype, "label": label})
        for o in options:
            opt = child(f, NS_DATA, "option")
            child(opt, NS_DATA, "value").text = o
        for v in values:
            child(f, NS_DATA, "value").text = v

    field_(F_TITLE, "text-single", "A friendly name for the node", [cfg[F_TITLE]])
    field_("pubsub#description", "text-single", "A description of the node", [cfg["pubsub#description"]])
    field_("pubsub#type", "text-single", "The type of payload data", [cfg["pubsub#type"]])
    field_(F_ACCESS, "list-single", "Who may subscribe and retrieve items", [cfg[F_ACCESS]], ACCESS_MODELS)
    field_(F_GROUPS, "list-multi", "Roster groups allowed to subscribe (access model roster)", cfg[F_GROUPS])
    field_(F_MAX_ITEMS, "text-single", f"Maximum number of items to keep (1 to {MAX_ITEMS_CAP}, or max)",
           [str(cfg[F_MAX_ITEMS])])
    field_(F_PERSIST, "boolean", "Persist items to storage", [cfg[F_PERSIST]])
    field_(F_SEND_LAST, "list-single", "When to send the last published item", [cfg[F_SEND_LAST]], SEND_LAST)
    field_(F_NOTIFY_RETRACT, "boolean", "Notify subscribers when items are removed", [cfg[F_NOTIFY_RETRACT]])
    field_(F_NOTIFY_DELETE, "boolean", "Notify subscribers when the node is deleted", [cfg[F_NOTIFY_DELETE]])
    field_("pubsub#deliver_notifications", "boolean", "Deliver event notifications", ["true"])
    field_("pubsub#deliver_payloads", "boolean", "Deliver payloads with event notifications", ["true"])
    field_("pubsub#publish_model", "list-single", "Who may publish", ["publishers"], ["publishers"])
    field_("pubsub#notification_type", "list-single", "Message type of notifications", ["headline"],
           ["headline"])
    field_("pubsub#presence_based_delivery", "boolean", "Notify only available users", ["true"])
    field_("pubsub#notify_config", "boolean", "Notify subscribers of configuration changes", ["false"])
    field_("pubsub#notify_sub", "boolean", "Notify the owner of new subscribers", ["false"])
    field_("pubsub#purge_offline", "boolean", "Purge items when the owner goes offline", ["false"])
    return x


def _stamp(at: float) -> str:
    t = dt.datetime.fromtimestamp(at, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- per-session state ------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Caps:
    key: tuple[str, str] | None = None  # (hash, ver) the client last advertised
    interests: frozenset[str] = frozenset()  # nodes it wants notifications of
    primed: bool = False  # its initial presence was processed (last items sent)


@dataclass(eq=False, slots=True)
class _Query:
    key: tuple[str, str]
    node: str
    session: Session
    timer: asyncio.TimerHandle


@dataclass(slots=True)
class Change:
    """Items as a notification carries them: (id, payload) for publish, ids for retract."""

    published: list[tuple[str, Element]] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)


class Pep(Module):
    name = "pep"
    account_identities = (Identity("pubsub", "pep"),)
    account_features = (
        NS_PUBSUB,
        f"{NS_PUBSUB}#access-open",
        f"{NS_PUBSUB}#access-presence",
        f"{NS_PUBSUB}#access-roster",
        f"{NS_PUBSUB}#access-whitelist",
        f"{NS_PUBSUB}#auto-create",
        f"{NS_PUBSUB}#auto-subscribe",
        f"{NS_PUBSUB}#config-node",
        f"{NS_PUBSUB}#config-node-max",
        f"{NS_PUBSUB}#create-and-configure",
        f"{NS_PUBSUB}#create-nodes",
        f"{NS_PUBSUB}#delete-items",
        f"{NS_PUBSUB}#delete-nodes",
        f"{NS_PUBSUB}#filtered-notifications",
        f"{NS_PUBSUB}#item-ids",
        f"{NS_PUBSUB}#last-published",
        f"{NS_PUBSUB}#multi-items",
        f"{NS_PUBSUB}#persistent-items",
        f"{NS_PUBSUB}#presence-notifications",
        f"{NS_PUBSUB}#publish",
        f"{NS_PUBSUB}#publish-options",
        f"{NS_PUBSUB}#purge-nodes",
        f"{NS_PUBSUB}#retract-items",
        f"{NS_PUBSUB}#retrieve-default",
        f"{NS_PUBSUB}#retrieve-items",
    )

    def __init__(self, server: Server):
        super().__init__(server)
        self.store = PubsubRepo(server.db)
        # Per-owner locks around read-check-write sequences; a lock lives while it is used.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._caps: dict[Session, _Caps] = {}
        self._known: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        self._waiting: dict[tuple[str, str], list[Session]] = {}
        self._inflight: dict[tuple[str, str], str] = {}
        self._queries: dict[str, _Query] = {}
        self._ids = itertools.count(1)
        # Node name -> configuration a node of that name gets when a publish creates it.
        self._defaults: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        for ns in (NS_PUBSUB, NS_OWNER):
            self.hooks.add(f"iq-get/bare/{ns}", self._on_iq)
            self.hooks.add(f"iq-set/bare/{ns}", self._on_iq)
        self.hooks.add(f"iq-get/bare/{NS_DISCO_INFO}", self._disco_info, priority=10)
        self.hooks.add(f"iq-get/bare/{NS_DISCO_ITEMS}", self._disco_items, priority=10)
        self.hooks.add("iq-result/host", self._caps_answer)
        self.hooks.add("iq-error/host", self._caps_answer)
        # Ahead of the presence module, which ends the event: only the caps are read here.
        self.hooks.add("presence/broadcast", self._on_presence, priority=50)
        self.server.signals.connect("initial-presence", self._initial_presence)
        self.server.signals.connect("presence-unavailable", self._unavailable)
        self.server.signals.connect("session-closed", self._session_closed)
        self.server.signals.connect("user-deleted", self._user_deleted)

    async def stop(self) -> None:
        for query in self._queries.values():
            query.timer.cancel()
        self._queries.clear()

    @property
    def roster(self) -> Any:
        return self.server.modules["roster"]

    @property
    def policy(self) -> Any:
        return self.server.modules["policy"]

    def _lock(self, owner: str) -> asyncio.Lock:
        lock = self._locks.get(owner)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[owner] = lock
        return lock

    # --- the API other modules use ------------------------------------------------------------------

    def set_node_defaults(self, node: str, config: dict[str, Any]) -> None:
        """What nodes of this name start with when a publish creates them (before the
        publisher's options): a module that knows a node must stay private says so here."""
        self._defaults[node] = dict(config)

    def interests(self, jid: str) -> frozenset[str]:
        """The nodes a connected resource (full JID) gets notifications of."""
        try:
            session = self.router.sessions.get(JID.parse(jid))
        except InvalidJID:
            return frozenset()
        state = self._caps.get(session) if session is not None else None
        return state.interests if state is not None else frozenset()

    async def node(self, owner: str, node: str) -> NodeRecord | None:
        return await self.store.get_node(owner, node)

    async def items(self, owner: str, node: str, max_items: int | None = None,
                    item_ids: Sequence[str] | None = None) -> list[tuple[str, Element]]:
        """(id, payload) of a node's items, oldest first; unreadable payloads are skipped."""
        out: list[tuple[str, Element]] = []
        for it in await self.store.items(owner, node, max_items, item_ids):
            payload = self._parse(it)
            if payload is not None:
                out.append((it.item_id, payload))
        return out

    async def publish(self, owner: str, node: str, item_id: str | None, payload: Element, *,
                      publisher: str | None = None, options: dict[str, list[str]] | None = None,
                      new_config: dict[str, Any] | None = None, source: str | None = None) -> str:
        """Publish one item on the owner's node and notify; returns the item id.

        `options` are publish options (preconditions on an existing node, configuration of a
        new one); `new_config` is the configuration a node gets if this creates it.
        Raises PepError when the request cannot be met."""
        data = serialize(payload, "").decode("utf-8")
        size = len(data.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:
            raise PepError("not-acceptable", f"the item is {size} bytes; at most {MAX_PAYLOAD_BYTES} are allowed",
                           "payload-too-big", echo=False)
        item_id = item_id or uuid.uuid4().hex
        if len(item_id) > MAX_ITEM_ID:
            raise PepError("not-acceptable", f"item ids are at most {MAX_ITEM_ID} characters")
        async with self._lock(owner):
            existing = await self.store.get_node(owner, node)
            if existing is not None:
                _check_preconditions(existing.config, options or {})
                config = existing.config
            else:
                config = _new_config(new_config or self._defaults.get(node, {}), options or {})
                if await self.store.count_nodes(owner) >= MAX_NODES:
                    raise PepError("policy-violation",
                                   f"an account may have at most {MAX_NODES} nodes; delete some first",
                                   "max-nodes-exceeded")
            persist = _flag(config, F_PERSIST)
            await self.store.publish(owner, node, owner, item_id, publisher or owner,
                                     data if persist else None, max_items(config), config)
            if not persist:
                # A transient node keeps nothing, not even what it held before.
                await self.store.purge(owner, node)
        # Notified and announced outside the lock: listeners may publish in turn.
        await self._notify(owner, node, config, Change(published=[(item_id, payload)]))
        await self._emit("pep-published", owner, node, item_id, payload, source)
        return item_id

    async def retract(self, owner: str, node: str, item_ids: Sequence[str], *, notify: bool | None = None,
                      source: str | None = None) -> list[str]:
        """Remove items; returns the ids that existed. Raises PepError for no such node."""
        record = await self.store.get_node(owner, node)
        if record is None:
            raise PepError("item-not-found", f"there is no node {node!r}")
        removed = await self.store.retract(owner, node, item_ids)
        if removed:
            if notify if notify is not None else _flag(record.config, F_NOTIFY_RETRACT):
                await self._notify(owner, node, record.config, Change(retracted=removed))
            await self._emit("pep-retracted", owner, node, removed, source)
        return removed

    async def delete_node(self, owner: str, node: str, *, source: str | None = None) -> bool:
        record = await self.store.get_node(owner, node)
        if record is None:
            return False
        await self.store.delete_node(owner, node)
        if _flag(record.config, F_NOTIFY_DELETE):
            await self._notify_event(owner, node, record.config,
                                     make(NS_EVENT, "event", {}, make(NS_EVENT, "delete", {"node": node})))
        await self._emit("pep-deleted", owner, node, source)
        return True

    async def purge(self, owner: str, node: str, *, source: str | None = None) -> bool:
        record = await self.store.get_node(owner, node)
        if record is None:
            return False
        await self.store.purge(owner, node)
        await self._notify_event(owner, node, record.config,
                                 make(NS_EVENT, "event", {}, make(NS_EVENT, "purge", {"node": node})))
        await self._emit("pep-purged", owner, node, source)
        return True

    async def _emit(self, signal: str, *args: Any) -> None:
        # A listener's failure must not undo or fail a change that is already stored.
        try:
            await self.server.signals.emit(signal, *args)
        except Exception:
            self.log.exception("a %s listener failed", signal)

    # --- requests -----------------------------------------------------------------------------------

    async def _account_exists(self, bare: str) -> bool:
        if self.router.sessions.resources(bare):
            return True
        return await self.repos.users.get(bare) is not None

    async def _reply(self, ctx: Routed, *payload: Element) -> None:
        reply = iq_result(ctx.stanza, *payload)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)

    async def refuse(self, ctx: Routed, e: PepError) -> None:
        stanza = ctx.stanza if e.echo else Element(ctx.stanza.tag, ctx.stanza.attrib)
        app = make(NS_ERRORS, e.app, e.app_attrs) if e.app else None
        reply = error_reply(stanza, e.condition, e.text, app=app)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)

    async def _on_iq(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        top = ctx.stanza[0]
        try:
            if local_name(top.tag) != "pubsub":
                raise PepError("bad-request", "the payload must be a <pubsub/> element")
            if not await self._account_exists(owner):
                raise PepError("service-unavailable")
            if namespace(top.tag) == NS_OWNER:
                payload = await self._owner_request(ctx, owner, top)
            elif ctx.type == "set":
                payload = await self._set_request(ctx, owner, top)
            else:
                payload = await self._get_request(ctx, owner, top)
        except PepError as e:
            await self.refuse(ctx, e)
            return True
        if payload is None:
            await self._reply(ctx)
        else:
            await self._reply(ctx, payload)
        return True

    def _own(self, ctx: Routed, owner: str) -> None:
        if str(ctx.frm.bare) != owner:
            raise PepError("forbidden", "only the account owner may change its personal nodes")

    @staticmethod
    def _node_name(el: Element) -> str:
        node = el.get("node")
        if not node:
            raise PepError("bad-request", "name the node", "nodeid-required")
        if len(node) > MAX_NODE_NAME:
            raise PepError("not-acceptable", f"node names are at most {MAX_NODE_NAME} characters")
        return node

    async def _set_request(self, ctx: Routed, owner: str, top: Element) -> Element | None:
        actions = {local_name(c.tag): c for c in top if namespace(c.tag) == NS_PUBSUB}
        if "publish" in actions:
            return await self._publish_request(ctx, owner, actions["publish"], actions.get("publish-options"))
        if "retract" in actions:
            await self._retract_request(ctx, owner, actions["retract"])
            return None
        if "create" in actions:
            return await self._create_request(ctx, owner, actions["create"], actions.get("configure"))
        for name, feature in (("subscribe", "subscribe"), ("unsubscribe", "subscribe"),
                              ("options", "subscription-options")):
            if name in actions:
                raise _unsupported(feature)
        raise PepError("bad-request", "no publish-subscribe request found")

    async def _get_request(self, ctx: Routed, owner: str, top: Element) -> Element:
        actions = {local_name(c.tag): c for c in top if namespace(c.tag) == NS_PUBSUB}
        if "items" in actions:
            return await self._items_request(ctx, owner, actions["items"])
        for name, feature in (("subscriptions", "retrieve-subscriptions"),
                              ("affiliations", "retrieve-affiliations"),
                              ("options", "subscription-options"),
                              ("default", "retrieve-default-sub")):
            if name in actions:
                raise _unsupported(feature)
        raise PepError("bad-request", "no publish-subscribe request found")

    async def _publish_request(self, ctx: Routed, owner: str, publish: Element,
                               options_el: Element | None) -> Element:
        node = self._node_name(publish)
        self._own(ctx, owner)
        items = publish.findall(q(NS_PUBSUB, "item"))
        if len(items) != 1:
            raise PepError("bad-request", "publish exactly one item", "item-required" if not items else "invalid-payload")
        payloads = list(items[0])
        if not payloads:
            raise PepError("bad-request", "the item has no payload", "payload-required")
        if len(payloads) > 1 or namespace(payloads[0].tag) in ("", NS_CLIENT):
            raise PepError("bad-request", "an item carries exactly one namespaced payload element",
                           "invalid-payload")
        options = {}
        if options_el is not None:
            options = read_form(options_el.find(q(NS_DATA, "x")), NS_PUBLISH_OPTIONS)
        item_id = await self.publish(owner, node, items[0].get("id"), payloads[0], publisher=str(ctx.frm),
                                     options=options)
        pubsub = make(NS_PUBSUB, "pubsub")
        pub = child(pubsub, NS_PUBSUB, "publish", {"node": node})
        child(pub, NS_PUBSUB, "item", {"id": item_id})
        return pubsub

    async def _retract_request(self, ctx: Routed, owner: str, retract: Element) -> None:
        node = self._node_name(retract)
        self._own(ctx, owner)
        ids = [it.get("id", "") for it in retract.findall(q(NS_PUBSUB, "item"))]
        if not ids or not all(ids):
            raise PepError("bad-request", "name the items to retract by id", "item-required")
        notify_attr = retract.get("notify")
        notify = None if notify_attr is None else notify_attr.lower() in ("1", "true")
        removed = await self.retract(owner, node, ids, notify=notify)
        if not removed:
            raise PepError("item-not-found", "none of those items exist")

    async def _create_request(self, ctx: Routed, owner: str, create: Element,
                              configure: Element | None) -> Element | None:
        node = create.get("node")
        if not node:
            raise PepError("not-acceptable", "personal nodes need a name", "nodeid-required")
        node = self._node_name(create)
        self._own(ctx, owner)
        fields = read_form(configure.find(q(NS_DATA, "x")) if configure is not None else None, NS_NODE_CONFIG)
        config = _configure(dict(DEFAULT_CONFIG), fields)
        async with self._lock(owner):
            if await self.store.count_nodes(owner) >= MAX_NODES:
                raise PepError("policy-violation", f"an account may have at most {MAX_NODES} nodes; delete some first",
                               "max-nodes-exceeded")
            created = await self.store.create_node(owner, node, owner, config)
        if not created:
            raise PepError("conflict", f"the node {node!r} exists already")
        return None

    async def _items_request(self, ctx: Routed, owner: str, items_el: Element) -> Element:
        node = self._node_name(items_el)
        record = await self.store.get_node(owner, node)
        if record is None:
            raise PepError("item-not-found", f"there is no node {node!r}")
        await self.check_access(owner, ctx.frm, record.config)
        wanted = [it.get("id", "") for it in items_el.findall(q(NS_PUBSUB, "item"))]
        if any(not i for i in wanted):
            raise PepError("bad-request", "requested items need an id")
        limit: int | None = None
        if items_el.get("max_items") is not None:
            try:
                limit = int(items_el.get("max_items", ""))
                if limit < 1:
                    raise ValueError
            except ValueError:
                raise PepError("bad-request", "max_items must be a positive number") from None
        found = await self.store.items(owner, node, limit, wanted or None)
        if wanted and not found:
            raise PepError("item-not-found", "none of those items exist")
        pubsub = make(NS_PUBSUB, "pubsub")
        out = child(pubsub, NS_PUBSUB, "items", {"node": node})
        for it in found:
            payload = self._parse(it)
            el = child(out, NS_PUBSUB, "item", {"id": it.item_id})
            if payload is not None:
                el.append(payload)
        return pubsub

    async def _owner_request(self, ctx: Routed, owner: str, top: Element) -> Element | None:
        self._own(ctx, owner)
        actions = {local_name(c.tag): c for c in top if namespace(c.tag) == NS_OWNER}
        if "default" in actions:
            if ctx.type != "get":
                raise PepError("bad-request", "the default configuration is retrieved with a get")
            pubsub = make(NS_OWNER, "pubsub")
            child(pubsub, NS_OWNER, "default").append(config_form(DEFAULT_CONFIG))
            return pubsub
        if "configure" in actions:
            return await self._configure_request(ctx, owner, actions["configure"])
        if "delete" in actions or "purge" in actions:
            if ctx.type != "set":
                raise PepError("bad-request", "deleting and purging are set requests")
            action = "delete" if "delete" in actions else "purge"
            node = self._node_name(actions[action])
            done = await (self.delete_node(owner, node) if action == "delete" else self.purge(owner, node))
            if not done:
                raise PepError("item-not-found", f"there is no node {node!r}")
            return None
        for name, feature in (("affiliations", "modify-affiliations"), ("subscriptions", "manage-subscriptions")):
            if name in actions:
                raise _unsupported(feature)
        raise PepError("bad-request", "no publish-subscribe owner request found")

    async def _configure_request(self, ctx: Routed, owner: str, configure: Element) -> Element | None:
        node = self._node_name(configure)
        record = await self.store.get_node(owner, node)
        if record is None:
            raise PepError("item-not-found", f"there is no node {node!r}")
        if ctx.type == "get":
            pubsub = make(NS_OWNER, "pubsub")
            child(pubsub, NS_OWNER, "configure", {"node": node}).append(config_form(record.config))
            return pubsub
        x = configure.find(q(NS_DATA, "x"))
        if x is None:
            raise PepError("bad-request", "send the configuration form")
        if x.get("type") == "cancel":
            return None
        config = _configure(full_config(record.config), read_form(x, NS_NODE_CONFIG))
        async with self._lock(owner):
            # Lowering max_items drops the oldest items at once, as the limit says.
            await self.store.set_config(owner, node, config, max_items(config))
            if not _flag(config, F_PERSIST):
                await self.store.purge(owner, node)
        return None

    # --- who may see what -----------------------------------------------------------------------------

    async def check_access(self, owner: str, requester: JID, config: dict[str, Any]) -> None:
        """Raises PepError unless `requester` may retrieve items of a node with `config`."""
        if str(requester.bare) == owner:
            return
        access = _current(config, F_ACCESS)
        if access == "open":
            return
        if access == "whitelist":
            raise PepError("not-allowed", "this node is only for its owner", "closed-node")
        item = (await self.roster.get(owner)).get(str(requester.bare))
        if item is None or not item.has_from:
            raise PepError("not-authorized", "only contacts who see the owner's presence may do that",
                           "presence-subscription-required")
        if access == "roster" and not set(item.groups) & set(_current(config, F_GROUPS) or ()):
            raise PepError("not-authorized", "the owner has not opened this node to your roster group",
                           "not-in-roster-group")

    async def _audience(self, owner: str, node: str, config: dict[str, Any]) -> list[Session]:
        """The available sessions that get notifications of a node: the owner's and its
        presence subscribers', each only if its client asked for this node's events."""
        out = [s for s in self.router.sessions.of(owner) if s.available and node in self._wanted(s)]
        access = _current(config, F_ACCESS)
        if access == "whitelist":
            return out
        roster = await self.roster.get(owner)
        groups = set(_current(config, F_GROUPS) or ())
        try:
            owner_jid = JID.parse(owner)
        except InvalidJID:
            return out
        for contact in roster.subscribers():
            sessions = [s for s in self.router.sessions.of(contact) if s.available and node in self._wanted(s)]
            if not sessions:
                continue
            if access == "roster":
                item = roster.get(contact)
                if item is None or not set(item.groups) & groups:
                    continue
            try:
                cjid = JID.parse(contact)
            except InvalidJID:
                continue
            if await self.policy.is_blocked(owner, cjid) or await self.policy.is_blocked(contact, owner_jid):
                continue
            out.extend(sessions)
        return out

    def _wanted(self, session: Session) -> frozenset[str]:
        state = self._caps.get(session)
        return state.interests if state is not None else frozenset()

    # --- notifications --------------------------------------------------------------------------------

    @staticmethod
    def _parse(it: ItemRecord) -> Element | None:
        try:
            return fromstring(it.payload)
        except ParseError:
            return None

    @staticmethod
    def _items_event(owner: str, node: str, change: Change) -> Element:
        event = make(NS_EVENT, "event")
        items = child(event, NS_EVENT, "items", {"node": node})
        for item_id, payload in change.published:
            child(items, NS_EVENT, "item", {"id": item_id}).append(payload)
        for item_id in change.retracted:
            child(items, NS_EVENT, "retract", {"id": item_id})
        return event

    def _message(self, owner: str, to: Session, event: Element, stamp: float | None = None) -> Element:
        msg = make(NS_CLIENT, "message", {"from": owner, "to": str(to.jid), "type": "headline",
                                          "id": f"pep-{secrets.token_hex(8)}"})
        msg.append(event)
        if stamp is not None:
            child(msg, NS_DELAY, "delay", {"from": owner, "stamp": _stamp(stamp)})
        return msg

    async def _notify(self, owner: str, node: str, config: dict[str, Any], change: Change) -> None:
        await self._notify_event(owner, node, config, self._items_event(owner, node, change))

    async def _notify_event(self, owner: str, node: str, config: dict[str, Any], event: Element) -> None:
        for session in await self._audience(owner, node, config):
            session.send(self._message(owner, session, event))

    async def _send_last(self, session: Session, nodes: frozenset[str]) -> None:
        """The newest item of every node of these names the session may see: the user's
        own and those of the contacts whose presence the user receives."""
        user = session.bare
        roster = await self.roster.get(user)
        services = [user]
        for contact in roster.subscriptions():
            try:
                cjid = JID.parse(contact)
            except InvalidJID:
                continue
            if self.server.is_local_user_domain(cjid):
                services.append(contact)
        records = await self.store.nodes_of(services, sorted(nodes))
        eligible: list[NodeRecord] = []
        try:
            me = JID.parse(user)
        except InvalidJID:
            return
        for rec in records:
            if _current(rec.config, F_SEND_LAST) != "on_sub_and_presence":
                continue
            if rec.service != user:
                try:
                    await self.check_access(rec.service, me, rec.config)
                except PepError:
                    continue
                owner_jid = JID.parse(rec.service)
                if await self.policy.is_blocked(rec.service, me) or await self.policy.is_blocked(user, owner_jid):
                    continue
            eligible.append(rec)
        last = await self.store.last_items([(r.service, r.node) for r in eligible])
        for rec in eligible:
            it = last.get((rec.service, rec.node))
            payload = self._parse(it) if it is not None else None
            if it is None or payload is None:
                continue
            event = self._items_event(rec.service, rec.node, Change(published=[(it.item_id, payload)]))
            session.send(self._message(rec.service, session, event, stamp=it.ts))

    # --- learning what each client wants (XEP-0115) ------------------------------------------------

    async def _on_presence(self, ctx: Routed) -> bool:
        session = ctx.origin
        if session is None or ctx.type != "available":
            return False
        try:
            await self._caps_from(session, ctx.stanza)
        except Exception:
            self.log.exception("reading the capabilities of %s failed", ctx.frm)
        return False

    async def _caps_from(self, session: Session, presence: Element) -> None:
        c = presence.find(q(NS_CAPS, "c"))
        state = self._caps.setdefault(session, _Caps())
        if c is None:
            # Some clients put caps in their first presence only: no <c/> is no change.
            return
        key: tuple[str, str] | None = None
        hash_name = (c.get("hash") or "").lower()
        ver = c.get("ver") or ""
        node = c.get("node") or ""
        # Legacy caps (no hash) cannot be verified, so they are not trusted.
        if hash_name in HASHES and ver:
            key = (hash_name, ver)
        if key == state.key:
            return
        state.key = key
        if key is None:
            await self._set_interests(session, frozenset())
            return
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            await self._set_interests(session, known)
            return
        waiters = self._waiting.setdefault(key, [])
        if session not in waiters:
            waiters.append(session)
        if key not in self._inflight:
            self._ask(key, node)

    def _ask(self, key: tuple[str, str], node: str) -> None:
        """Send disco#info to the first client still waiting on this caps string."""
        waiters = self._waiting.get(key, [])
        while waiters:
            session = waiters[0]
            state = self._caps.get(session)
            if state is None or state.key != key or getattr(session, "closed", False):
                waiters.pop(0)
                continue
            qid = f"parley-caps-{next(self._ids)}"
            iq = make(NS_CLIENT, "iq", {"type": "get", "id": qid, "to": str(session.jid),
                                        "from": session.jid.domain},
                      make(NS_DISCO_INFO, "query", {"node": f"{node}#{key[1]}"} if node else {}))
            timer = asyncio.get_running_loop().call_later(CAPS_QUERY_TIMEOUT, self._timed_out, qid)
            self._queries[qid] = _Query(key, node, session, timer)
            self._inflight[key] = qid
            session.send(iq)
            return
        self._waiting.pop(key, None)
        self._inflight.pop(key, None)

    def _give_up(self, query: _Query) -> None:
        """The asked client did not tell (or cannot be trusted): ask the next one with the
        same string."""
        waiters = self._waiting.get(query.key, [])
        if query.session in waiters:
            waiters.remove(query.session)
        if query.key not in self._inflight:
            self._ask(query.key, query.node)

    def _timed_out(self, qid: str) -> None:
        query = self._queries.pop(qid, None)
        if query is not None:
            self._inflight.pop(query.key, None)
            self._give_up(query)

    async def _caps_answer(self, ctx: Routed) -> bool:
        query = self._queries.get(ctx.stanza.get("id", ""))
        if query is None or str(ctx.frm) != str(query.session.jid):
            return False
        del self._queries[ctx.stanza.get("id", "")]
        query.timer.cancel()
        self._inflight.pop(query.key, None)
        try:
            await self._caps_result(ctx, query)
        except Exception:
            self.log.exception("handling the disco#info answer of %s failed", ctx.frm)
        return True

    async def _caps_result(self, ctx: Routed, query: _Query) -> None:
        info = ctx.stanza.find(q(NS_DISCO_INFO, "query"))
        hash_name, ver = query.key
        if ctx.type == "result" and info is not None:
            try:
                features = parse_info(info).features
            except IllFormed:
                features = None
            if features is not None:
                wanted = frozenset(f[: -len("+notify")] for f in features if f.endswith("+notify"))
                if verify_ver(ver, info, hash_name):
                    self._known[query.key] = wanted
                    while len(self._known) > CAPS_CACHE_SIZE:
                        self._known.popitem(last=False)
                    for session in self._waiting.pop(query.key, []):
                        state = self._caps.get(session)
                        if state is not None and state.key == query.key:
                            await self._set_interests(session, wanted)
                    return
                # An unverified answer holds for the client that gave it, never for others.
                state = self._caps.get(query.session)
                if state is not None and state.key == query.key:
                    await self._set_interests(query.session, wanted)
        self._give_up(query)

    async def _set_interests(self, session: Session, wanted: frozenset[str]) -> None:
        state = self._caps.setdefault(session, _Caps())
        new = wanted - state.interests
        state.interests = wanted
        if new and state.primed and session.available:
            await self._send_last(session, new)

    async def _initial_presence(self, session: Session) -> None:
        try:
            state = self._caps.setdefault(session, _Caps())
            state.primed = True
            if state.interests:
                await self._send_last(session, state.interests)
        except Exception:
            self.log.exception("sending the last published items to %s failed", session.jid)

    async def _unavailable(self, session: Session) -> None:
        state = self._caps.get(session)
        if state is not None:
            state.primed = False

    async def _session_closed(self, session: Session) -> None:
        self._caps.pop(session, None)
        for qid, query in list(self._queries.items()):
            if query.session is session:
                del self._queries[qid]
                query.timer.cancel()
                self._inflight.pop(query.key, None)
                self._give_up(query)
        for key, waiters in list(self._waiting.items()):
            if session in waiters:
                waiters.remove(session)
                if not waiters and key not in self._inflight:
                    del self._waiting[key]

    async def _user_deleted(self, bare: str) -> None:
        try:
            await self.store.delete_service(bare)
        except Exception:
            self.log.exception("deleting the personal nodes of %s failed", bare)

    # --- service discovery ----------------------------------------------------------------------------

    async def _disco_info(self, ctx: Routed) -> bool:
        node = ctx.stanza[0].get("node")
        if not node:
            return False
        record = await self.store.get_node(str(ctx.to), node)
        if record is None:
            return False
        try:
            await self.check_access(str(ctx.to), ctx.frm, record.config)
        except PepError:
            return False
        query = make(NS_DISCO_INFO, "query", {"node": node})
        child(query, NS_DISCO_INFO, "identity", {"category": "pubsub", "type": "leaf"})
        child(query, NS_DISCO_INFO, "feature", {"var": NS_PUBSUB})
        meta = make(NS_DATA, "x", {"type": "result"})
        for var, value in (("FORM_TYPE", NS_META), ("pubsub#owner", record.owner),
                           (F_ACCESS, _current(record.config, F_ACCESS)),
                           (F_TITLE, _current(record.config, F_TITLE) or "")):
            f = child(meta, NS_DATA, "field", {"var": var})
            if var == "FORM_TYPE":
                f.set("type", "hidden")
            child(f, NS_DATA, "value").text = value
        query.append(meta)
        await self._reply(ctx, query)
        return True

    async def _disco_items(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        node = ctx.stanza[0].get("node")
        if not node:
            if str(ctx.frm.bare) != owner:
                return False  # disco answers others
            query = make(NS_DISCO_ITEMS, "query")
            for rec in await self.store.list_nodes(owner):
                attrs = {"jid": owner, "node": rec.node}
                title = _current(rec.config, F_TITLE)
                if title:
                    attrs["name"] = title
                child(query, NS_DISCO_ITEMS, "item", attrs)
            await self._reply(ctx, query)
            return True
        record = await self.store.get_node(owner, node)
        if record is None:
            return False
        try:
            await self.check_access(owner, ctx.frm, record.config)
        except PepError:
            return False
        query = make(NS_DISCO_ITEMS, "query", {"node": node})
        for item_id in await self.store.item_ids(owner, node):
            child(query, NS_DISCO_ITEMS, "item", {"jid": owner, "name": item_id})
        await self._reply(ctx, query)
        return True


# --- configuration checks -----------------------------------------------------------------------------


def _configure(config: dict[str, Any], fields: dict[str, list[str]]) -> dict[str, Any]:
    """A configuration with submitted fields applied; not-acceptable for a bad one."""
    out = dict(config)
    for var, values in fields.items():
        try:
            value = normalise(var, values)
        except ValueError as e:
            raise PepError("not-acceptable", str(e)) from None
        if var not in FIXED:
            out[var] = value
    return out


def _new_config(base: dict[str, Any], options: dict[str, list[str]]) -> dict[str, Any]:
    """The configuration of a node created by a publish: defaults, then what the creating
    module asks for, then the publisher's options (which must all be supported)."""
    config = dict(DEFAULT_CONFIG)
    config.update(base)
    for var, values in options.items():
        try:
            value = normalise(var, values)
        except ValueError as e:
            raise PepError("conflict", f"publish option cannot be met: {e}", "precondition-not-met") from None
        if var not in FIXED:
            config[var] = value
    return config


def _check_preconditions(config: dict[str, Any], options: dict[str, list[str]]) -> None:
    """XEP-0060 7.1.5: every publish option must match the existing node's configuration."""
    for var, values in options.items():
        try:
            wanted = normalise(var, values)
        except ValueError as e:
            raise PepError("conflict", f"publish option cannot be met: {e}", "precondition-not-met") from None
        have = _current(config, var)
        if _effective(var, wanted) != _effective(var, have):
            shown = ", ".join(have) if isinstance(have, list) else have
            raise PepError("conflict", f"the node's {var} is {shown or '(empty)'}, not the one asked for",
                           "precondition-not-met")


module_class = Pep
