"""The one Redis key scheme.

Keys that one Lua script touches share a Redis Cluster hash tag: ``{c:<conversation>}`` for a
conversation's state, ``{u:<user>}`` for a user's.
"""

from __future__ import annotations

PREFIX = "im"


def conversation_tag(conversation: str) -> str:
    return f"{{c:{conversation}}}"


def conversation_seq(conversation: str) -> str:
    """Counter holding the conversation's last assigned seq."""
    return f"{PREFIX}:{conversation_tag(conversation)}:seq"


def conversation_log(conversation: str) -> str:
    """Sorted set of the conversation's messages, score = seq."""
    return f"{PREFIX}:{conversation_tag(conversation)}:log"


def conversation_sealed(conversation: str) -> str:
    """The seq up to which the archive has sealed the conversation's messages (the log keeps
    everything above it, whatever its limit)."""
    return f"{PREFIX}:{conversation_tag(conversation)}:sealed"


def conversation_amended(conversation: str) -> str:
    """Sorted set of the changes (recalls, edits) whose ``im_msg_versions`` row the archive has
    not committed yet, one member per change, ``"{seq}:{version}"`` or ``"{seq}:r"`` (score =
    seq): the log keeps their entries (and all above them) until it has, so history below the
    log never shows an older version."""
    return f"{PREFIX}:{conversation_tag(conversation)}:amended"


def conversation_untold(conversation: str) -> str:
    """Sorted set of the changes (members as in ``conversation_amended``, score = seq; at most
    one per seq, the newest) written to the log whose members, pushes and hook are not done
    yet: a repeat of the request that finds its change here finishes it."""
    return f"{PREFIX}:{conversation_tag(conversation)}:untold"


def dedup(conversation: str, sender: str, client_msg_id: str) -> str:
    """``mid:seq`` already given to this (sender, client message id) in this conversation."""
    return f"{PREFIX}:{conversation_tag(conversation)}:dedup:{sender}:{client_msg_id}"


def gateway_channel(node: str) -> str:
    """Pub/sub channel of one gateway: sender ACKs and pushes for the connections it holds."""
    return f"{PREFIX}:gw:{node}"


def user_tag(user: str) -> str:
    return f"{{u:{user}}}"


def inbox(user: str) -> str:
    """Sorted set, score = mid: the user's undelivered/un-ACKed messages, newest kept."""
    return f"{PREFIX}:{user_tag(user)}:inbox"


def last_seq(user: str) -> str:
    """Hash conversation -> the newest seq delivered to the user (guards replays)."""
    return f"{PREFIX}:{user_tag(user)}:last"


def read_seq(user: str) -> str:
    """Hash conversation -> the seq up to which the user has read."""
    return f"{PREFIX}:{user_tag(user)}:read"


def unread(user: str) -> str:
    """Hash conversation -> the user's unread count there."""
    return f"{PREFIX}:{user_tag(user)}:unread"


def unread_total(user: str) -> str:
    """The user's total unread count, kept on its own (never summed at read time)."""
    return f"{PREFIX}:{user_tag(user)}:unread_total"


def user_gateways(user: str) -> str:
    """Hash gateway node -> how many of the user's connections it holds."""
    return f"{PREFIX}:{user_tag(user)}:gateways"


def deleted(user: str) -> str:
    """Set of mids the user deleted for themself."""
    return f"{PREFIX}:{user_tag(user)}:deleted"


def mentions(user: str) -> str:
    """Hash conversation -> the seqs (comma-separated, ascending) of messages mentioning the user
    above their read seq (core/storage/mentions.py)."""
    return f"{PREFIX}:{user_tag(user)}:mentions"


def mention_all(conversation: str) -> str:
    """Sorted set of the seqs of a read fan-out group's ``@all`` messages (score = seq): one
    record for every member, counted against each one's read seq."""
    return f"{PREFIX}:{conversation_tag(conversation)}:mention_all"


def recalled(user: str) -> str:
    """Hash conversation -> the recalled seqs above the user's read seq there, ascending and
    comma-separated (``"5,9"``): unread = last - read - how many of them are at most last."""
    return f"{PREFIX}:{user_tag(user)}:recalled"


def user_state_keys(user: str) -> list[str]:
    """The keys the delivery and read scripts touch, in their KEYS order."""
    return [inbox(user), last_seq(user), read_seq(user), unread(user), unread_total(user), recalled(user)]


def archive_pending(app_id: str, partition: int) -> str:
    """List of records waiting for the archive writer of one deployment, one per ingest partition."""
    return f"{PREFIX}:archive:{app_id}:pending:{partition}"


def archive_lock(app_id: str, partition: int) -> str:
    return f"{PREFIX}:archive:{app_id}:lock:{partition}"


def archive_maintenance_lock(app_id: str) -> str:
    """Held by the worker that maintains the archive, for one maintenance interval (one at a time)."""
    return f"{PREFIX}:archive:{app_id}:maintenance"


def archive_merge_lock(app_id: str) -> str:
    """Held by the worker that merges the archive's fresh files, for one merge interval; set
    by maintenance while it runs (its full merge would conflict with the quick one)."""
    return f"{PREFIX}:archive:{app_id}:merge"


def dead_letter_seen(app_id: str, digest: str) -> str:
    """Marks a record already set aside on the dead-letter topic (a replay sets it aside once)."""
    return f"{PREFIX}:dlq:{app_id}:{digest}"


def group_tag(gid: str) -> str:
    return f"{{g:{gid}}}"


def group_members(gid: str) -> str:
    """Hash user -> role (owner, admin, member): the truth about who is in a group."""
    return f"{PREFIX}:{group_tag(gid)}:members"


def group_joined(gid: str) -> str:
    """Hash user -> the group conversation's seq when they joined (they see what comes after)."""
    return f"{PREFIX}:{group_tag(gid)}:joined"


def group_info(gid: str) -> str:
    """Hash name, owner, created_at_ms."""
    return f"{PREFIX}:{group_tag(gid)}:info"


def user_groups(user: str) -> str:
    """Set of the groups a user is in (an index of the members hashes)."""
    return f"{PREFIX}:{user_tag(user)}:groups"


def group_online(gid: str) -> str:
    """Hash ``gateway|user`` -> connections: the members connected now, by gateway."""
    return f"{PREFIX}:{group_tag(gid)}:online"


def fan_out_pending() -> str:
    """Hash conversation -> newest seq stored by read fan-out whose unread counts are not yet
    flushed to the members (the 5-second flush works through it; it survives a worker restart)."""
    return f"{PREFIX}:fanout:pending"


def fan_out_lock() -> str:
    """Held by the worker flushing group unread counts (one at a time)."""
    return f"{PREFIX}:fanout:lock"


READ_UPTO = "read_upto"  # field of group_info: the newest seq stored by read fan-out


def token_revocation(user: str) -> str:
    """Hash ``revoked_ms`` -> Unix ms: the user's tokens issued at or before it are refused."""
    return f"{PREFIX}:{user_tag(user)}:tokens"


REVOKED_MS = "revoked_ms"  # field of token_revocation


def gateways_channel() -> str:
    """Pub/sub channel every gateway listens on, besides its own: orders for all of them
    (close a user's sessions after a revocation). Not under ``im:gw:``, so no node name clashes."""
    return f"{PREFIX}:gateways"


def gateways_alive() -> str:
    """Sorted set gateway node -> the Unix ms (Redis's clock) until which it is presumed alive:
    each gateway's heartbeat pushes its own on; one past it names a dead gateway to sweep."""
    return f"{PREFIX}:{{gateways}}:alive"


def gateway_sweeping(node: str) -> str:
    """Held (a sweeper's token) while a dead gateway's presence entries are swept; the same
    hash tag as ``gateways_alive``, as one script claims the sweep on both."""
    return f"{PREFIX}:{{gateways}}:sweeping:{node}"


def gateway_users(node: str) -> str:
    """Hash user -> connections the gateway holds: where a sweep finds the dead gateway's
    entries in the users' ``user_gateways`` and their groups' ``group_online`` hashes."""
    return f"{PREFIX}:{{gw:{node}}}:users"


# -- accounts and the social graph (core/accounts.py, core/contacts.py); all under the user's tag


def account(user: str) -> str:
    """Hash: status (active|deactivated), display_name, avatar_url, custom (JSON object text),
    created_at_ms, updated_at_ms, dm (anyone|contacts), presence (visible|hidden), last_seen_ms."""
    return f"{PREFIX}:{user_tag(user)}:account"


def accounts_index() -> str:
    """Sorted set of every account's user id, all scored 0 so it pages in user id order
    (ZRANGEBYLEX); one key, not per slot. created_at_ms is in the account hash."""
    return f"{PREFIX}:accounts"


def contacts(user: str) -> str:
    """Hash peer -> since_ms: the user's contacts (each edge is written on both sides)."""
    return f"{PREFIX}:{user_tag(user)}:contacts"


def requests_in(user: str) -> str:
    """Hash peer -> JSON {note, at_ms}: contact requests the user received, pending."""
    return f"{PREFIX}:{user_tag(user)}:requests_in"


def requests_out(user: str) -> str:
    """Hash peer -> JSON {note, at_ms}: contact requests the user sent, pending."""
    return f"{PREFIX}:{user_tag(user)}:requests_out"


def blocked(user: str) -> str:
    """Hash peer -> at_ms: the users this user blocks."""
    return f"{PREFIX}:{user_tag(user)}:blocked"


def wrote_to(user: str) -> str:
    """Set of peers a contacts-only user messaged first (their replies pass the privacy check)."""
    return f"{PREFIX}:{user_tag(user)}:wrote_to"


def conversation_settings(user: str) -> str:
    """Hash conversation -> JSON {pinned, muted, hidden_seq, marked_unread}: the user's settings
    of each conversation (absent: all defaults)."""
    return f"{PREFIX}:{user_tag(user)}:conversation_settings"
