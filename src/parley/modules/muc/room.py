"""A chat room's state: its settings, occupants, affiliations, subject and recent history.

Settings follow the seed's rule: each "room owners can change X" switch that is off means
the room has the service default for X, whatever was stored for it; only the switches that
are on let a room keep its own value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from xml.etree.ElementTree import Element

from parley.config import MucSection
from parley.xmpp.jid import JID

ROLES = ("none", "visitor", "participant", "moderator")
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")


def role_rank(role: str) -> int:
    return ROLES.index(role)


def aff_rank(aff: str) -> int:
    return AFFILIATIONS.index(aff)


# Owner switch (config name) -> the RoomSettings field it unlocks.
SWITCHES = {
    "members_only": "members_only",
    "moderator_invites": "moderator_invites",
    "open_membership": "open_membership",
    "show_offline_members": "show_offline_members",
    "backwards_compatible": "backwards_compatible",
    "anonymous": "anonymous",
    "invite_role": "invite_role",
    "room_size": "max_occupants",
    "private_message_role": "private_message_role",
    "subject_role": "subject_role",
    "strip_xhtml": "strip_xhtml",
    "moderated": "moderated",
    "history_on_join": "history_on_join",
}


@dataclass
class RoomSettings:
    # Owners may always change these.
    name: str = ""
    description: str = ""
    public: bool = True
    persistent: bool = False
    password: str = ""  # empty: no password
    # These follow the service default unless the owner switch is on.
    members_only: bool = False
    moderated: bool = False
    anonymous: bool = False
    max_occupants: int = 50
    private_message_role: str = "visitor"
    subject_role: str = "participant"
    invite_role: str = "participant"
    moderator_invites: bool = False
    open_membership: bool = False
    show_offline_members: bool = False
    backwards_compatible: bool = False
    strip_xhtml: bool = False
    history_on_join: int = 15
    # Keys the room's occupant ids (XEP-0421), so they stay the same across restarts.
    salt: str = field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def defaults(cls, cfg: MucSection) -> RoomSettings:
        return cls(
            members_only=cfg.members_only, moderated=cfg.moderated, anonymous=cfg.anonymous,
            max_occupants=min(cfg.default_room_size, cfg.max_occupants),
            private_message_role=cfg.private_message_role, subject_role=cfg.subject_role,
            invite_role=cfg.invite_role, moderator_invites=cfg.moderator_invites,
            open_membership=cfg.open_membership, show_offline_members=cfg.show_offline_members,
            backwards_compatible=cfg.backwards_compatible, strip_xhtml=cfg.strip_xhtml,
            history_on_join=min(cfg.history_on_join, cfg.max_history),
        )

    @classmethod
    def restore(cls, cfg: MucSection, stored: dict[str, Any]) -> RoomSettings:
        """Stored settings with the locked ones put back to the service default."""
        default = cls.defaults(cfg)
        out = replace(default)
        known = {f.name for f in fields(cls)}
        for key, value in stored.items():
            if key in known:
                setattr(out, key, value)
        for switch, attr in SWITCHES.items():
            if switch not in cfg.owner_can_change:
                setattr(out, attr, getattr(default, attr))
        out.max_occupants = min(out.max_occupants, cfg.max_occupants)
        out.history_on_join = min(out.history_on_join, cfg.max_history)
        return out

    def dump(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, eq=False)
class Occupant:
    nick: str
    jid: JID  # the occupant's full JID
    role: str
    presence: Element  # its last presence, without the MUC payloads
    hidden: bool = False


@dataclass(eq=False)
class Room:
    jid: str  # room@service
    settings: RoomSettings
    occupants: dict[str, Occupant] = field(default_factory=dict)  # visible ones, by nick
    hidden: dict[JID, Occupant] = field(default_factory=dict)  # by full JID
    by_full: dict[JID, Occupant] = field(default_factory=dict)  # every occupant
    affiliations: dict[str, str] = field(default_factory=dict)  # bare JID -> affiliation
    nicks: dict[str, str] = field(default_factory=dict)  # bare JID -> reserved nickname
    history: deque[tuple[float, Element]] = field(default_factory=deque)
    subject: str = ""
    subject_by: str | None = None
    last_active: float = field(default_factory=time.time)
    destroyed: bool = False

    @property
    def persistent(self) -> bool:
        return self.settings.persistent

    def by_jid(self, jid: JID) -> Occupant | None:
        return self.by_full.get(jid)

    def add(self, occ: Occupant) -> None:
        if occ.hidden:
            self.hidden[occ.jid] = occ
        else:
            self.occupants[occ.nick] = occ
        self.by_full[occ.jid] = occ

    def remove(self, occ: Occupant) -> None:
        if occ.hidden:
            self.hidden.pop(occ.jid, None)
        elif self.occupants.get(occ.nick) is occ:
            del self.occupants[occ.nick]
        self.by_full.pop(occ.jid, None)

    def everyone(self) -> list[Occupant]:
        """Every occupant that receives what the room sends: visible, then hidden."""
        return [*self.occupants.values(), *self.hidden.values()]

    def count(self) -> int:
        return len(self.by_full)

    def nick_owner(self, nick: str) -> str | None:
        """The bare JID that reserved a nickname, if anyone did."""
        folded = nick.casefold()
        for bare, reserved in self.nicks.items():
            if reserved.casefold() == folded:
                return bare
        return None

    def occupant_id(self, jid: JID) -> str:
        digest = hmac.new(bytes.fromhex(self.settings.salt), f"{self.jid}\0{jid.bare}".encode(),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a == "owner")

    def features(self, archived: bool) -> tuple[str, ...]:
        s = self.settings
        out = [
            "http://jabber.org/protocol/muc", "http://jabber.org/protocol/disco#info",
            "jabber:iq:register", "urn:xmpp:occupant-id:0", "http://jabber.org/protocol/muc#request",
            "muc_public" if s.public else "muc_hidden",
            "muc_persistent" if s.persistent else "muc_temporary",
            "muc_membersonly" if s.members_only else "muc_open",
            "muc_moderated" if s.moderated else "muc_unmoderated",
            "muc_semianonymous" if s.anonymous else "muc_nonanonymous",
            "muc_passwordprotected" if s.password else "muc_unsecured",
        ]
        if archived:
            out += ["urn:xmpp:mam:2", "urn:xmpp:sid:0"]
        return tuple(out)
