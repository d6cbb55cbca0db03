"""The one schema, for SQLite and PostgreSQL alike.

Changes to it go through an Alembic migration in ``migrations/versions``.
JIDs are stored as their canonical bare string; the owner of a row is always a bare JID.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

domains = Table(
    "domains",
    metadata,
    Column("name", String(255), primary_key=True),
    # "admin" when an administrator added it; "system" when derived from users' addresses.
    Column("managed_by", String(16), nullable=False, default="admin"),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("jid", String(1023), primary_key=True),
    Column("domain", String(255), nullable=False, index=True),
    # Seed: per-user "Enable User for Unified CM IM and Presence".
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

# SCRAM keys per hash; a plain password is never stored.
credentials = Table(
    "credentials",
    metadata,
    Column("jid", String(1023), nullable=False),
    Column("mechanism", String(16), nullable=False),
    Column("salt", LargeBinary, nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("stored_key", LargeBinary, nullable=False),
    Column("server_key", LargeBinary, nullable=False),
    UniqueConstraint("jid", "mechanism", name="uq_credentials_jid_mech"),
    ForeignKeyConstraint(["jid"], ["users.jid"], ondelete="CASCADE"),
)

roster = Table(
    "roster",
    metadata,
    Column("owner", String(1023), nullable=False),
    Column("contact", String(1023), nullable=False),
    Column("name", String(1023), nullable=True),
    # none | to | from | both (RFC 6121 section 2.1.2.5)
    Column("subscription", String(8), nullable=False, default="none"),
    # Outbound request pending ("Pending Out").
    Column("ask", Boolean, nullable=False, default=False),
    # Inbound request pending ("Pending In"); the request stanza is kept to redeliver.
    Column("pending_in", Boolean, nullable=False, default=False),
    Column("pending_in_stanza", Text, nullable=True),
    # Subscription pre-approval (RFC 6121 section 3.4).
    Column("approved", Boolean, nullable=False, default=False),
    # Whether the item is visible in the roster (a bare pending-in record is not).
    Column("visible", Boolean, nullable=False, default=True),
    Column("groups", Text, nullable=False, default="[]"),
    UniqueConstraint("owner", "contact", name="uq_roster_owner_contact"),
)
Index("ix_roster_contact", roster.c.contact)

roster_versions = Table(
    "roster_versions",
    metadata,
    Column("owner", String(1023), primary_key=True),
    Column("version", BigInteger, nullable=False, default=0),
)

offline_messages = Table(
    "offline_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(1023), nullable=False, index=True),
    Column("sender", String(3071), nullable=False),
    Column("stanza", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

vcards = Table(
    "vcards",
    metadata,
    Column("owner", String(1023), primary_key=True),
    Column("xml", Text, nullable=False),
)

private_storage = Table(
    "private_storage",
    metadata,
    Column("owner", String(1023), nullable=False),
    Column("namespace", String(1023), nullable=False),
    Column("xml", Text, nullable=False),
    UniqueConstraint("owner", "namespace", name="uq_private_owner_ns"),
)

# The user's authorization policy: allow and block lists of JIDs or whole domains.
# The XEP-0191 block list is the "block" list.
policy_entries = Table(
    "policy_entries",
    metadata,
    Column("owner", String(1023), nullable=False),
    Column("list", String(8), nullable=False),  # allow | block
    Column("target", String(3071), nullable=False),
    UniqueConstraint("owner", "list", "target", name="uq_policy_entry"),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("owner", String(1023), primary_key=True),
    Column("default_policy", String(8), nullable=True),  # allow | block; NULL = server default
    Column("auto_approve", Boolean, nullable=True),
)

last_activity = Table(
    "last_activity",
    metadata,
    Column("owner", String(1023), primary_key=True),
    Column("at", Float, nullable=False),
    Column("status", Text, nullable=True),
)

# --- modern clients (archive, PEP/pubsub, push, privacy lists) -------------------------------

# Message archive (XEP-0313) for users and rooms; `owner` is the archive's bare JID.
archive = Table(
    "archive",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(1023), nullable=False),
    Column("stanza_id", String(64), nullable=False),
    Column("peer", String(3071), nullable=False),  # bare JID of the other party
    Column("ts", Float, nullable=False),
    Column("stanza", Text, nullable=False),
    UniqueConstraint("owner", "stanza_id", name="uq_archive_owner_sid"),
)
Index("ix_archive_owner_ts", archive.c.owner, archive.c.ts)
Index("ix_archive_owner_peer_ts", archive.c.owner, archive.c.peer, archive.c.ts)

archive_prefs = Table(
    "archive_prefs",
    metadata,
    Column("owner", String(1023), primary_key=True),
    Column("default_mode", String(8), nullable=False, default="always"),  # always | never | roster
    Column("always", Text, nullable=False, default="[]"),
    Column("never", Text, nullable=False, default="[]"),
)

# Publish-subscribe nodes: PEP (service = the user's bare JID) and the pubsub service.
pubsub_nodes = Table(
    "pubsub_nodes",
    metadata,
    Column("service", String(1023), nullable=False),
    Column("node", String(1023), nullable=False),
    Column("owner", String(1023), nullable=False),
    Column("config", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("service", "node", name="uq_pubsub_node"),
)

pubsub_items = Table(
    "pubsub_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(1023), nullable=False),
    Column("node", String(1023), nullable=False),
    Column("item_id", String(1023), nullable=False),
    Column("publisher", String(3071), nullable=False),
    Column("payload", Text, nullable=False),
    Column("ts", Float, nullable=False),
    UniqueConstraint("service", "node", "item_id", name="uq_pubsub_item"),
)
Index("ix_pubsub_items_node", pubsub_items.c.service, pubsub_items.c.node, pubsub_items.c.ts)

pubsub_subscriptions = Table(
    "pubsub_subscriptions",
    metadata,
    Column("service", String(1023), nullable=False),
    Column("node", String(1023), nullable=False),
    Column("jid", String(3071), nullable=False),
    Column("subid", String(64), nullable=False),
    Column("state", String(16), nullable=False, default="subscribed"),
    UniqueConstraint("service", "node", "jid", name="uq_pubsub_subscription"),
)

pubsub_affiliations = Table(
    "pubsub_affiliations",
    metadata,
    Column("service", String(1023), nullable=False),
    Column("node", String(1023), nullable=False),
    Column("jid", String(3071), nullable=False),
    Column("affiliation", String(16), nullable=False),
    UniqueConstraint("service", "node", "jid", name="uq_pubsub_affiliation"),
)

# Push notification registrations (XEP-0357): the app server and node a client enabled.
push_registrations = Table(
    "push_registrations",
    metadata,
    Column("owner", String(1023), nullable=False),
    Column("service", String(3071), nullable=False),
    Column("node", String(1023), nullable=False),
    Column("options", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("owner", "service", "node", name="uq_push_registration"),
)

# Privacy lists (XEP-0016): items kept as JSON in their order.
privacy_lists = Table(
    "privacy_lists",
    metadata,
    Column("owner", String(1023), nullable=False),
    Column("name", String(1023), nullable=False),
    Column("items", Text, nullable=False, default="[]"),
    Column("is_default", Boolean, nullable=False, default=False),
    UniqueConstraint("owner", "name", name="uq_privacy_list"),
)

# --- file transfer --------------------------------------------------------------------------

# HTTP upload slots and the files put into them (XEP-0363); also what the compliance archive
# reads about file transfers. `token` authorises the one PUT; `path` (relative to the upload
# folder: random directory, then the file name) is also the file's address, so it is unique.
uploads = Table(
    "uploads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(1023), nullable=False),
    Column("token", String(64), nullable=False),
    Column("filename", String(1023), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    # NULL until the file has been received in full.
    Column("uploaded_at", Float, nullable=True),
    Column("path", String(1023), nullable=False),
    UniqueConstraint("token", name="uq_uploads_token"),
    UniqueConstraint("path", name="uq_uploads_path"),
)
Index("ix_uploads_owner_created", uploads.c.owner, uploads.c.created_at)
Index("ix_uploads_created", uploads.c.created_at)

# --- group chat ------------------------------------------------------------------------------

# Persistent chat rooms (XEP-0045). `config` is the room's settings as JSON (RoomSettings);
# the room's messages live in `archive` with the room's JID as owner.
muc_rooms = Table(
    "muc_rooms",
    metadata,
    Column("jid", String(1023), primary_key=True),
    Column("config", Text, nullable=False, default="{}"),
    Column("subject", Text, nullable=False, default=""),
    Column("subject_by", String(1023), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# A room's affiliations (owner, admin, member, outcast) by bare JID, and reserved nicknames.
muc_affiliations = Table(
    "muc_affiliations",
    metadata,
    Column("room", String(1023), nullable=False),
    Column("jid", String(1023), nullable=False),
    Column("affiliation", String(16), nullable=False),
    Column("nick", String(1023), nullable=True),
    UniqueConstraint("room", "jid", name="uq_muc_affiliation"),
)
