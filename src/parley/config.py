"""Configuration: one TOML file, validated at start.

Every seed default lives here, with the seed's name for it in a comment. An invalid
file is refused with the key, the value and the reason (``ConfigError``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parley.domains import normalise_domain, validate_domain


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSection(_Section):
    # Seed: "Default Domain" (starts as the machine's DNS domain; `parley init` asks for it).
    domain: str
    # Seed: "Address scheme" - userid@default-domain or directory URI (C7).
    address_scheme: Literal["userid", "directory-uri"] = "userid"
    data_dir: str = "."
    name: str = "Parley"
    # Accounts allowed to run the service administration commands (XEP-0133).
    admins: list[str] = []
    # This node's name and its cluster's, as in the seed's system chat alias
    # conference-<node>-<cluster>.<domain> (one DNS label each).
    node: str = "1"
    cluster: str = "parley"

    @field_validator("node", "cluster")
    @classmethod
    def _label_ok(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", v):
            raise ValueError(f"{v!r} must be one DNS label: letters, digits and inner hyphens")
        return v

    @field_validator("domain")
    @classmethod
    def _domain_ok(cls, v: str) -> str:
        problems = validate_domain(v)
        if problems:
            raise ValueError("; ".join(problems))
        return normalise_domain(v)


class C2SSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5222, ge=0, le=65535)
    # XEP-0368 direct TLS; port 0 (here and above) lets the system pick a free port.
    tls_port: int = Field(5223, ge=0, le=65535)
    direct_tls: bool = True
    # TLS required by default; plaintext only for labs and tests.
    require_tls: bool = True
    max_stanza_bytes: int = Field(262144, ge=1024)
    max_depth: int = Field(64, ge=4, le=1024)
    max_attributes: int = Field(64, ge=4, le=1024)
    # Seconds a connection may take to authenticate before it is closed.
    auth_timeout: float = Field(60.0, gt=0)
    # Seconds of silence before the server pings a client, and how long it waits.
    ping_interval: float = Field(300.0, gt=0)
    ping_timeout: float = Field(60.0, gt=0)


class TLSSection(_Section):
    cert: str = "certs/server.pem"
    key: str = "certs/server.key"
    # Lowest TLS version accepted (C17: TLS 1.2+ by default).
    min_version: Literal["1.2", "1.3"] = "1.2"


class StorageSection(_Section):
    # sqlite:///relative/or/absolute.db or postgresql://user:pw@host:port/db
    url: str = "sqlite:///parley.db"

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith("postgresql://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v


class IMSection(_Section):
    # Seed: "Enable instant messaging" (cluster-wide), default ON; off also disables group chat.
    enabled: bool = True
    # Seed: "Suppress Offline Instant Messaging", default unchecked, i.e. offline storage ON.
    offline: bool = True
    max_offline_per_user: int = Field(1000, ge=0)  # 0 = no limit
    # Seed: "Enable file transfer".
    file_transfer: bool = True
    # Seed: "Allow clients to log instant message history" / "Allow cut & paste" (client policy).
    allow_history_logging: bool = True
    allow_cut_and_paste: bool = True


class PresenceSection(_Section):
    # Seed: "Enable availability sharing", default ON.
    sharing: bool = True
    # Seed: "Maximum contact list size (per user)", default 200; 0 = No Limit.
    max_contacts: int = Field(200, ge=0)
    # Seed: "Maximum number of watchers", default 200; 0 = No Limit.
    max_watchers: int = Field(200, ge=0)
    # Seed: "Enable ad-hoc presence subscriptions" (no default given; off).
    adhoc_enabled: bool = False
    # Seed: "Maximum number of concurrent active ad-hoc subscriptions", 0 = unlimited.
    adhoc_max: int = Field(0, ge=0)
    # Seed: "Time-to-live of an ad-hoc subscription (seconds)".
    adhoc_ttl: int = Field(3600, ge=1)
    # Seed: presence change throttle, updates per second per user (0 = no throttle).
    throttle_per_second: float = Field(0.0, ge=0)


class SessionsSection(_Section):
    # Seed: "Maximum number of logon sessions per user" (no default given; 0 = no limit).
    max_per_user: int = Field(0, ge=0)


class AuthorizationSection(_Section):
    # Seed: "Allow users to view the availability of other users without being prompted
    # for approval", default ON.
    auto_approve: bool = True
    # Seed: user policy "Default policy" allow all / block all.
    default_policy: Literal["allow", "block"] = "allow"


class StreamManagementSection(_Section):
    # XEP-0198: seconds a broken session waits for the client to resume it.
    resume_timeout: int = Field(300, ge=0, le=86400)
    # Unacknowledged stanzas kept per session before the server asks and then gives up.
    max_unacked: int = Field(1000, ge=10)


class ArchiveSection(_Section):
    # XEP-0313 message archive for users.
    enabled: bool = True
    # Days messages are kept (0 = forever).
    retention_days: int = Field(0, ge=0)
    default_mode: Literal["always", "roster", "never"] = "always"
    max_page: int = Field(100, ge=1, le=1000)
    # true: a message is delivered only once it is committed to the archive (one commit per
    # message of a sender). false: archived in group commits right after delivery; stream
    # management acknowledgements and archive queries still wait for the commit.
    synchronous: bool = False


class RegistrationSection(_Section):
    # XEP-0077 in-band registration of new accounts; off by default.
    enabled: bool = False


class ExternalService(_Section):
    type: Literal["stun", "turn", "stuns", "turns"]
    host: str
    port: int = Field(3478, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    username: str | None = None
    password: str | None = None
    # A TURN REST shared secret: credentials are made per request (XEP-0215 with expiry).
    secret: str | None = None
    ttl: int = Field(86400, ge=60)


class PushSection(_Section):
    # XEP-0357: what a notification may carry ("summary": sender and body count, "none": nothing).
    include: Literal["none", "summary", "body"] = "summary"


class ComponentSection(_Section):
    # XEP-0114 external component: its domain and shared secret.
    domain: str
    secret: str


class ComponentsSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5347, ge=0, le=65535)
    enabled: bool = False
    components: list[ComponentSection] = []


class UploadSection(_Section):
    # XEP-0363 HTTP file upload, served by the server itself (SPEC C5), under im.file_transfer.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(5280, ge=0, le=65535)
    # The base of the URLs clients are given; unset, it is built from host and port.
    public_url: str | None = None
    # HTTPS with the server certificate; plain HTTP only behind a TLS proxy or in labs.
    tls: bool = True
    max_file_size: int = Field(10 * 1024 * 1024, ge=1)
    quota_per_user: int = Field(100 * 1024 * 1024, ge=0)  # bytes kept per user; 0 = no limit
    expiry_days: int = Field(30, ge=0)  # 0 = files are kept forever
    storage_dir: str = "uploads"

    @field_validator("public_url")
    @classmethod
    def _public_url_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http:// or https:// URL without a query")
        return v.rstrip("/")


# Room settings the seed gives a "Room owners can change ..." switch for (all off by default).
OwnerSwitch = Literal[
    "members_only", "moderator_invites", "open_membership", "show_offline_members",
    "backwards_compatible", "anonymous", "invite_role", "room_size", "private_message_role",
    "subject_role", "strip_xhtml", "moderated", "history_on_join",
]
Role = Literal["visitor", "participant", "moderator"]


class MucSection(_Section):
    """Group chat (XEP-0045), seed chapter 13."""

    # Off here, or instant messaging off, and the chat service refuses everything.
    enabled: bool = True
    # Seed: the administrator-managed chat aliases; empty means conference.<default domain>.
    service: list[str] = []
    # Seed: "System Automatically Manages Primary Group Chat Server Aliases", on: this node
    # also serves conference-<node>-<cluster>.<default domain>. Turned off, rooms under it
    # stay reachable only if that name is added to `service`.
    system_alias: bool = True
    # Seed: "Enable Persistent Chat". Off: rooms are ad-hoc only.
    persistent: bool = True
    # The chat node's own database (SQLAlchemy URL, as [storage] url); empty = the server's.
    # Unreachable at start: the chat service does not start; lost later: rooms keep
    # working, persistent rooms cannot be created, and writes resume when it is back.
    database: str = ""
    # Seconds between attempts to write to the chat database while it is unreachable.
    database_retry: float = Field(5.0, gt=0)
    # Seed: "Group chat system administrators" (name@domain): owners of every room.
    admins: list[str] = []
    # Seed: "Maximum number of rooms allowed" (ad-hoc and persistent).
    max_rooms: int = Field(16500, ge=1)
    # Seed: "Maximum number of persistent chat rooms allowed".
    max_persistent_rooms: int = Field(1500, ge=0)
    # Seed: "How many users can be in a room at one time" (hidden ones included).
    max_occupants: int = Field(1000, ge=1)
    # Seed: "How many hidden users can be in a room at one time".
    max_hidden: int = Field(1000, ge=0)
    # Seed: "Default maximum occupancy for a room" (<= max_occupants).
    default_room_size: int = Field(50, ge=1)
    # Seed: "Number of messages in chat history displayed by default" (<= max_history).
    history_on_join: int = Field(15, ge=0)
    # Seed: "Maximum number of messages that can be retrieved from the archive".
    max_history: int = Field(100, ge=0)
    # Seed: "Allow only group chat system administrators to create persistent chat rooms".
    only_admins_create_persistent: bool = False
    # Seed: "Timeout value for persistent chat rooms (minutes)", 0 = never closed for idleness.
    room_idle_timeout: int = Field(0, ge=0)
    # Seed: "Rooms are for members only by default", off.
    members_only: bool = False
    # Seed: "Only moderators can invite people to members-only rooms", off (members can).
    moderator_invites: bool = False
    # Seed: "Users can add themselves to rooms as members", off (open membership).
    open_membership: bool = False
    # Seed: "Members and administrators who are not in a room are still visible", off.
    show_offline_members: bool = False
    # Seed: "Rooms are backwards-compatible with older clients" (groupchat 1.0), off: a
    # join without the MUC element is then a join; when off it is refused.
    backwards_compatible: bool = False
    # Seed: "Lowest participation level a user can have to invite others", participant.
    invite_role: Role = "participant"
    # Seed: "Archive all room messages": persistent rooms keep their messages (history
    # after a restart, MAM on the room). Ad-hoc rooms never keep anything.
    archive_messages: bool = True
    # Seed: "Archive all room joins and exits", off.
    archive_joins: bool = False
    # Seed: "Rooms are moderated by default", off.
    moderated: bool = False
    # Seed: "Rooms are anonymous by default", off: occupants see each other's real JIDs.
    anonymous: bool = False
    # Seed: "Remove all XHTML formatting from messages", off.
    strip_xhtml: bool = False
    # Seed: lowest role to send private messages (visitor) and to change the subject (participant).
    private_message_role: Role = "visitor"
    subject_role: Literal["participant", "moderator"] = "participant"
    # The "Room owners can change ..." switches that are on; empty = owners change none.
    owner_can_change: list[OwnerSwitch] = []

    @field_validator("service")
    @classmethod
    def _aliases_ok(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for alias in v:
            problems = validate_domain(alias)
            if problems:
                raise ValueError(f"{alias!r}: " + "; ".join(problems))
            name = normalise_domain(alias)
            if name in out:
                raise ValueError(f"{alias!r} is listed twice")
            out.append(name)
        return out

    @field_validator("admins")
    @classmethod
    def _admins_ok(cls, v: list[str]) -> list[str]:
        for jid in v:
            local, at, domain = jid.partition("@")
            if not at or not local or not domain or "/" in domain:
                raise ValueError(f"{jid!r} is not an IM address of the form name@domain")
        return [j.lower() for j in v]

    @model_validator(mode="after")
    def _limits_ok(self) -> MucSection:
        if self.default_room_size > self.max_occupants:
            raise ValueError(f"default_room_size {self.default_room_size} exceeds max_occupants {self.max_occupants}")
        if self.history_on_join > self.max_history:
            raise ValueError(f"history_on_join {self.history_on_join} exceeds max_history {self.max_history}")
        return self

    def aliases(self, server: ServerSection) -> list[str]:
        """Every chat alias this node serves: the administrator's, then the system alias."""
        out = list(self.service) or [f"conference.{server.domain}"]
        system = f"conference-{server.node}-{server.cluster}.{server.domain}"
        if self.system_alias and system not in out:
            out.append(system)
        return out


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    server: ServerSection
    c2s: C2SSection = C2SSection()
    tls: TLSSection = TLSSection()
    storage: StorageSection = StorageSection()
    im: IMSection = IMSection()
    presence: PresenceSection = PresenceSection()
    sessions: SessionsSection = SessionsSection()
    authorization: AuthorizationSection = AuthorizationSection()
    logging: LoggingSection = LoggingSection()
    stream_management: StreamManagementSection = StreamManagementSection()
    archive: ArchiveSection = ArchiveSection()
    registration: RegistrationSection = RegistrationSection()
    external_services: list[ExternalService] = []
    push: PushSection = PushSection()
    components: ComponentsSection = ComponentsSection()
    upload: UploadSection = UploadSection()
    muc: MucSection = MucSection()

    # Where the file was read from; relative paths in it are relative to this folder.
    base_dir: Path = Path(".")

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (self.base_dir / self.server.data_dir / p).resolve()

    def storage_url(self) -> str:
        url = self.storage.url
        if url.startswith("sqlite:///"):
            return "sqlite:///" + str(self.path(url[len("sqlite:///") :]))
        return url


def _describe(errors: list[Any], data: dict[str, Any]) -> list[str]:
    problems = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        value: Any = data
        for part in err["loc"]:
            value = value.get(part) if isinstance(value, dict) else None
        if err["type"] == "missing":
            problems.append(f"{key}: missing (required)")
        elif err["type"] == "extra_forbidden":
            problems.append(f"{key} = {value!r}: unknown setting")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key} = {value!r}: {msg}")
    return problems


def from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e.errors(), data)) from None
    # A chat alias equal to an IM domain would swallow that domain's users; domains added
    # later in the database are checked when the chat service starts.
    if cfg.server.domain in cfg.muc.service:
        raise ConfigError([f"muc.service = {cfg.muc.service!r}: {cfg.server.domain} is the IM domain, "
                           "it cannot be a chat alias"])
    cfg.base_dir = base_dir
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{p}: not valid TOML: {e}"]) from None
    return from_dict(data, p.parent.resolve())
