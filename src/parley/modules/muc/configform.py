"""The room configuration form (XEP-0045 section 10.2, FORM_TYPE muc#roomconfig).

Settings whose "room owners can change X" switch is off are left out of the form, and a
submitted value for one is refused with not-allowed unless it equals the current value
(clients often send back every field they know). Fields this server does not know are
ignored, as forms from other servers carry their own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from parley.config import MucSection
from parley.modules.muc.room import Room, RoomSettings
from parley.xmpp.dataforms import Field, FormValues, build_form
from parley.xmpp.jid import JID, InvalidJID

NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
RC = "muc#roomconfig_"
X = "x-parley#"

ROLE_TO_PM = {"visitor": "anyone", "participant": "participants", "moderator": "moderators"}
PM_TO_ROLE = {v: k for k, v in ROLE_TO_PM.items()}
ROLE_CHOICES = ("visitor", "participant", "moderator")


class FormError(Exception):
    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition = condition
        self.text = text


def _bool(var: str, values: list[str]) -> bool:
    v = (values[0] if values else "").strip().lower()
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    raise FormError("not-acceptable", f"{var}: {v!r} is not a boolean")


def _int(limit: int) -> Callable[[str, list[str]], int]:
    def parse(var: str, values: list[str]) -> int:
        v = (values[0] if values else "").strip()
        if not v.isdigit() or not 1 <= int(v) <= limit:
            raise FormError("not-acceptable", f"{var}: {v!r} is not a number from 1 to {limit}")
        return int(v)
    return parse


def _count(limit: int) -> Callable[[str, list[str]], int]:
    def parse(var: str, values: list[str]) -> int:
        v = (values[0] if values else "").strip()
        if not v.isdigit() or int(v) > limit:
            raise FormError("not-acceptable", f"{var}: {v!r} is not a number from 0 to {limit}")
        return int(v)
    return parse


def _text(_var: str, values: list[str]) -> str:
    return "\n".join(values).strip()


def _choice(mapping: dict[str, Any]) -> Callable[[str, list[str]], Any]:
    def parse(var: str, values: list[str]) -> Any:
        v = (values[0] if values else "").strip()
        if v not in mapping:
            raise FormError("not-acceptable", f"{var}: {v!r} is not one of {', '.join(mapping)}")
        return mapping[v]
    return parse


@dataclass(frozen=True)
class _Setting:
    var: str
    attr: str
    type: str
    label: str
    parse: Callable[[str, list[str]], Any]
    show: Callable[[Any], list[str]]
    switch: str | None = None  # the owner switch that unlocks it; None: always changeable
    options: tuple[str, ...] = ()


def _b(v: Any) -> list[str]:
    return ["1" if v else "0"]


def _settings(cfg: MucSection) -> list[_Setting]:
    return [
        _Setting(RC + "roomname", "name", "text-single", "Room name", _text, lambda v: [v]),
        _Setting(RC + "roomdesc", "description", "text-single", "Description", _text, lambda v: [v]),
        _Setting(RC + "publicroom", "public", "boolean", "Listed in the room directory", _bool, _b),
        _Setting(RC + "persistentroom", "persistent", "boolean", "Persistent room", _bool, _b),
        _Setting(RC + "membersonly", "members_only", "boolean", "Members only", _bool, _b, "members_only"),
        _Setting(RC + "moderatedroom", "moderated", "boolean", "Moderated", _bool, _b, "moderated"),
        _Setting(RC + "whois", "anonymous", "list-single", "Who may see occupants' real addresses",
                 _choice({"anyone": False, "moderators": True}),
                 lambda v: ["moderators" if v else "anyone"], "anonymous", ("anyone", "moderators")),
        _Setting(RC + "maxusers", "max_occupants", "text-single", f"Maximum occupants (up to {cfg.max_occupants})",
                 _int(cfg.max_occupants), lambda v: [str(v)], "room_size"),
        _Setting(RC + "allowpm", "private_message_role", "list-single", "Who may send private messages",
                 _choice(PM_TO_ROLE), lambda v: [ROLE_TO_PM[v]], "private_message_role",
                 tuple(ROLE_TO_PM.values())),
        _Setting(RC + "changesubject", "subject_role", "boolean", "Participants may change the subject",
                 lambda var, vals: "participant" if _bool(var, vals) else "moderator",
                 lambda v: _b(v == "participant"), "subject_role"),
        _Setting(X + "invite_role", "invite_role", "list-single", "Lowest role that may invite others",
                 _choice({r: r for r in ROLE_CHOICES}), lambda v: [v], "invite_role", ROLE_CHOICES),
        _Setting(X + "moderator_invites", "moderator_invites", "boolean",
                 "Only moderators may invite to a members-only room", _bool, _b, "moderator_invites"),
        _Setting(X + "open_membership", "open_membership", "boolean", "Users may make themselves members",
                 _bool, _b, "open_membership"),
        _Setting(X + "show_offline_members", "show_offline_members", "boolean",
                 "Show members who are not in the room", _bool, _b, "show_offline_members"),
        _Setting(X + "backwards_compatible", "backwards_compatible", "boolean",
                 "Admit groupchat 1.0 clients", _bool, _b, "backwards_compatible"),
        _Setting(X + "strip_xhtml", "strip_xhtml", "boolean", "Remove XHTML formatting from messages",
                 _bool, _b, "strip_xhtml"),
        _Setting(X + "history_on_join", "history_on_join", "text-single",
                 f"Messages of history sent on join (up to {cfg.max_history})", _count(cfg.max_history),
                 lambda v: [str(v)], "history_on_join"),
    ]


def _changeable(s: _Setting, cfg: MucSection) -> bool:
    return s.switch is None or s.switch in cfg.owner_can_change


def build(room: Room, cfg: MucSection) -> Element:
    fields: list[Field] = []
    for s in _settings(cfg):
        if not _changeable(s, cfg):
            continue
        fields.append(Field(s.var, s.type, s.label, tuple(s.show(getattr(room.settings, s.attr))),
                            options=s.options))
    fields += [
        Field(RC + "passwordprotectedroom", "boolean", "Password protected", _b(bool(room.settings.password))),
        Field(RC + "roomsecret", "text-private", "Password", (room.settings.password,)),
        Field(RC + "roomowners", "jid-multi", "Room owners",
              tuple(j for j, a in sorted(room.affiliations.items()) if a == "owner")),
        Field(RC + "roomadmins", "jid-multi", "Room administrators",
              tuple(j for j, a in sorted(room.affiliations.items()) if a == "admin")),
    ]
    return build_form("form", fields, form_type=NS_ROOMCONFIG, title=f"Configuration of {room.jid}")


@dataclass
class Change:
    settings: RoomSettings
    owners: list[str] | None  # None: unchanged
    admins: list[str] | None


def _jids(var: str, values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not v.strip():
            continue
        try:
            bare = str(JID.parse(v.strip()).bare)
        except InvalidJID:
            raise FormError("jid-malformed", f"{var}: {v!r} is not an address") from None
        if bare not in out:
            out.append(bare)
    return out


def apply(room: Room, cfg: MucSection, values: FormValues) -> Change:
    """The room's settings after a submitted form; raises FormError and changes nothing
    when any field is refused."""
    new = copy.deepcopy(room.settings)
    for s in _settings(cfg):
        if s.var not in values:
            continue
        value = s.parse(s.var, values[s.var])
        if value == getattr(room.settings, s.attr):
            continue
        if not _changeable(s, cfg):
            raise FormError("not-allowed", f"room owners cannot change {s.var} on this service")
        setattr(new, s.attr, value)
    if RC + "passwordprotectedroom" in values:
        if _bool(RC + "passwordprotectedroom", values[RC + "passwordprotectedroom"]):
            secret = _text("", values.get(RC + "roomsecret", [])) or room.settings.password
            if not secret:
                raise FormError("not-acceptable", "a password-protected room needs a password (roomsecret)")
            new.password = secret
        else:
            new.password = ""
    elif RC + "roomsecret" in values:
        new.password = _text("", values[RC + "roomsecret"])
    owners = _jids(RC + "roomowners", values[RC + "roomowners"]) if RC + "roomowners" in values else None
    admins = _jids(RC + "roomadmins", values[RC + "roomadmins"]) if RC + "roomadmins" in values else None
    if owners is not None and not owners:
        raise FormError("not-acceptable", "a room keeps at least one owner")
    if owners is not None and admins is not None and set(owners) & set(admins):
        raise FormError("not-acceptable", "an address cannot be both owner and admin")
    return Change(new, owners, admins)
