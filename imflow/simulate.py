"""``imflow simulate``: realistic IM traffic, straight into the archive or through a running imflow.

The model, with a seed for repeatability:

- users with Zipf-like activity (a few chat all day, most now and then);
- a daily rhythm (quiet nights, a lunch bump, an evening peak; weekends a little busier);
- one-to-one conversations between friends, and groups of 3 to 10,000 members whose sizes
  follow a power law; groups from ``read_fan_out_threshold`` members up are stored by read
  fan-out (one mailbox row per message), smaller ones by write fan-out (a row per member);
- read behaviour: receivers read some conversations minutes or hours later (``im_read_events``);
- red packets in conversations, grabbed by members with the double-average split;
- live rooms whose audience builds up to a peak during evening broadcasts (``live_room_minutes``);
- the social graph (``im_account_events``, ``im_contact_events``, ``im_block_events``): accounts
  sign up over the weeks before the messages start (sign-ups speeding up) and a few more while
  they run; each new account sends contact requests, partly to accounts chosen at random, mostly
  by preferential attachment (to an account in proportion to the requests it has had), so a few
  accounts gather many contacts; requests are accepted, declined, cancelled or left pending,
  some contacts are removed or blocked later, and some blocks lifted. The rows are those a live
  server writes (core/storage/social_records.py), event for event.

``to_archive`` makes the traffic vectorised (numpy and pyarrow), time slice by time slice, so
seqs follow time, and inserts each slice into the archive's DuckLake as Arrow tables in one
transaction; ``through_gateway`` drives a running imflow with real clients, for small scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from imflow.core.groups import EVENTS_TABLE
from imflow.core.ids import EPOCH_MS, NODE_BITS, SEQUENCE_BITS
from imflow.core.models import group_id
from imflow.core.storage import archive
from imflow.core.storage.lake import CONTENT, LAKE, MAILBOX, READ_EVENTS, LakeConfig, connect
from imflow.core.storage.social_records import ACCOUNT_EVENTS, BLOCK_EVENTS, CONTACT_EVENTS
from imflow.plugins.red_packets import EVENTS_TABLE as GRAB_EVENTS_TABLE
from imflow.plugins.red_packets import PACKETS_TABLE

ROOMS = "live_room_minutes"

# share of the day's messages in each hour (UTC), a typical consumer IM curve
HOURLY = np.array([1.2, 0.7, 0.4, 0.3, 0.3, 0.5, 1.2, 2.8, 4.2, 4.8, 5.0, 5.3,
                   6.2, 5.6, 5.0, 4.9, 5.0, 5.3, 5.9, 6.6, 7.4, 7.8, 6.8, 3.6])
HOURLY = HOURLY / HOURLY.sum()
TEXTS = [
    "ok", "haha", "on my way", "see you at 8?", "👍", "sounds good", "who's in for lunch",
    "can you send me the file", "happy birthday!!", "lol", "meeting moved to 3pm", "thanks!",
    "where are you", "did you see the game last night", "🎉🎉", "call me when you can",
    "running late, sorry", "good morning", "night night", "that's hilarious",
]


@dataclass(frozen=True)
class Scenario:
    users: int = 100_000
    messages: int = 1_000_000
    days: int = 7
    seed: int = 1
    start_ms: int = EPOCH_MS + 700 * 86_400_000  # late 2025
    group_share: float = 0.45  # of messages, into groups
    groups_per_user: float = 0.02
    max_group: int = 10_000
    read_fan_out_threshold: int = 100
    read_probability: float = 0.15  # of the messages a receiver gets, the share they report reading
    red_packet_share: float = 0.004
    live_rooms: int = 12
    chunk: int = 1_000_000  # messages per time slice (and per insert transaction)
    # the social graph
    social_days: int = 60  # accounts sign up (and make contacts) over these days before the messages start
    late_account_share: float = 0.05  # of users: more accounts signing up while the messages run (none sends yet)
    deactivate_share: float = 0.02  # of those late accounts, deactivated a while later (half of them come back)
    contact_requests: float = 3.0  # requests a new account sends, on average
    uniform_share: float = 0.1  # of requests, to an account chosen at random; the others by preferential attachment
    accept_share: float = 0.75  # of requests (then declined 0.1, cancelled 0.05, the rest left pending)
    remove_share: float = 0.04  # of contacts, removed later by one side
    block_share: float = 0.01  # of contacts, ended by a block later; and a fifth of declined requests' senders are blocked
    contacts_max: int = 5_000  # IMFLOW_CONTACTS_MAX: a request that would pass it is refused (not written)


@dataclass
class Population:
    """Who exists and who talks to whom: users, friendships, groups and their members."""

    names: pa.Array
    activity: np.ndarray  # per user, sums to 1
    pairs: np.ndarray  # (n, 2) user indices of one-to-one conversations
    pair_weight: np.ndarray
    group_sizes: np.ndarray
    group_offsets: np.ndarray  # into members
    members: np.ndarray  # group members, flattened
    group_weight: np.ndarray
    conversations: pa.Array = field(init=False)  # pairs first, then groups

    def __post_init__(self) -> None:
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        low, high = np.minimum(a, b), np.maximum(a, b)
        sep = pa.scalar(":")
        direct = pc.binary_join_element_wise(pa.scalar("p"), pc.take(self.names, low), pc.take(self.names, high), sep)
        groups = pc.binary_join_element_wise(pa.scalar("g"), pa.array([f"sim{g:05d}" for g in range(len(self.group_sizes))]), sep)
        self.conversations = pa.concat_arrays([direct.cast(pa.string()), groups.cast(pa.string())])

    @property
    def gids(self) -> list[str]:
        return [f"sim{g:05d}" for g in range(len(self.group_sizes))]


def _dictionary(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    """A string column of a few distinct values as indices into them (readers see strings)."""
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values)


def _strings(indices: np.ndarray, values: pa.Array) -> pa.Array:
    """A string column picked from many distinct values (a dictionary that large would be
    written again with every row group)."""
    return pc.take(values, pa.array(indices, pa.int32()))


def _weights(values: np.ndarray) -> np.ndarray:
    return values / values.sum()


def population(s: Scenario, rng: np.random.Generator) -> Population:
    users = s.users
    names = pa.array([f"u{i:07d}" for i in range(users)])
    activity = _weights(rng.permutation(1.0 / np.arange(1, users + 1) ** 1.07))
    # friendships: each user has a few, the active ones more
    n_pairs = users * 3
    a = rng.choice(users, n_pairs, p=activity)
    b = rng.integers(0, users, n_pairs)
    b = np.where(a == b, (b + 1) % users, b)
    pairs = np.unique(np.sort(np.stack([a, b], axis=1), axis=1), axis=0)
    pair_weight = _weights(np.sqrt(activity[pairs[:, 0]] * activity[pairs[:, 1]]) * rng.lognormal(0, 1, len(pairs)))
    # groups: power-law sizes from 3 up, a few very large ones
    n_groups = max(8, int(users * s.groups_per_user))
    top = min(s.max_group, users)
    sizes = np.clip(3 + np.floor(rng.pareto(1.05, n_groups) * 3), 3, top).astype(np.int64)
    if users >= s.max_group:
        sizes[:2] = top  # there are always some of the largest
    members = np.concatenate([rng.choice(users, int(size), replace=False) for size in sizes])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    group_weight = _weights(sizes ** 0.6 * rng.lognormal(0, 0.8, n_groups))
    return Population(names, activity, pairs, pair_weight, sizes, offsets, members, group_weight)


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For each element, how many equal keys come before it (keys in any order, stable)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    rank_sorted = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


@dataclass
class Slice:
    """One time slice of traffic as Arrow tables, ready to be inserted."""

    content: pa.Table
    mailbox: pa.Table  # sorted by conversation and seq
    reads: pa.Table
    packets: pa.Table
    grabs: pa.Table


class Generator:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = np.random.default_rng(scenario.seed)
        self.pop = population(scenario, self.rng)
        self.seq = np.zeros(len(self.pop.conversations), dtype=np.int64)  # last seq per conversation
        self.texts = pa.array([orjson.dumps({"text": t}).decode() for t in TEXTS])
        self.times, self.within_ms = self._times()
        # mailbox owners: the users, then the groups (a read fan-out row is owned by its group)
        self.owner_names = pa.concat_arrays([self.pop.names, self.pop.conversations[len(self.pop.pairs):]])
        self.peer_names = pa.concat_arrays([self.pop.names, self.pop.conversations])

    def _times(self) -> tuple[np.ndarray, np.ndarray]:
        """Every message's time, sorted: a day (weekends a little busier), an hour of the daily
        rhythm, a moment in it; and each one's rank within its millisecond (for unique mids)."""
        s, rng = self.s, self.rng
        weekday = (np.arange(s.days) + (s.start_ms // 86_400_000 + 3) % 7) % 7  # 1970-01-01 was a Thursday
        day = rng.choice(s.days, s.messages, p=_weights(np.where(weekday >= 5, 1.15, 1.0)))
        hour = rng.choice(24, s.messages, p=HOURLY)
        t = np.sort(s.start_ms + day * 86_400_000 + hour * 3_600_000 + (rng.random(s.messages) * 3_600_000).astype(np.int64))
        starts = np.r_[0, np.flatnonzero(t[1:] != t[:-1]) + 1]
        within = np.arange(len(t)) - np.repeat(starts, np.diff(np.r_[starts, len(t)]))
        assert within.max(initial=0) < 1 << (NODE_BITS + SEQUENCE_BITS), "too many messages in one millisecond"
        return t, within

    def slices(self) -> int:
        return math.ceil(self.s.messages / self.s.chunk)

    def slice(self, k: int) -> Slice:
        s, rng, pop = self.s, self.rng, self.pop
        t = self.times[k * s.chunk : (k + 1) * s.chunk]
        within_ms = self.within_ms[k * s.chunk : (k + 1) * s.chunk]
        n = len(t)
        # conversations and senders
        in_group = rng.random(n) < s.group_share
        n_direct = len(pop.pairs)
        pair = rng.choice(n_direct, n, p=pop.pair_weight)
        side = rng.integers(0, 2, n)
        group = rng.choice(len(pop.group_sizes), n, p=pop.group_weight)
        member_slot = (rng.random(n) * pop.group_sizes[group]).astype(np.int64)
        conversation = np.where(in_group, n_direct + group, pair)
        sender = np.where(in_group, pop.members[pop.group_offsets[group] + member_slot], pop.pairs[pair, side])
        # seqs follow time within each conversation and go on from the previous slice
        seq = self.seq[conversation] + _rank_within(conversation) + 1
        np.maximum.at(self.seq, conversation, seq)
        # mids: the time, and the rank within the millisecond in the node and sequence bits
        mid = ((t - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) | within_ms
        sent = t - np.minimum(rng.lognormal(2.0, 0.7, n), 5_000).astype(np.int64)  # gateway → ingest latency
        red = rng.random(n) < s.red_packet_share
        index = np.arange(k * s.chunk, k * s.chunk + n)
        totals = rng.choice([100, 500, 888, 1000, 2000, 6666, 10000], n)
        counts = np.where(in_group, np.minimum(rng.choice([3, 5, 10, 20, 50], n), pop.group_sizes[group]), 1)
        # bodies: the text pool, then one body per red packet
        reds = np.flatnonzero(red)
        red_bodies = [orjson.dumps({"total_cents": int(totals[i]), "count": int(counts[i]), "greeting": "恭喜发财"}).decode() for i in reds]
        body = rng.integers(0, len(TEXTS), n)
        body[reds] = len(TEXTS) + np.arange(len(reds))
        content = pa.table({
            "mid": mid,
            "conversation": _strings(conversation, pop.conversations),
            "seq": seq,
            "sender": _strings(sender, pop.names),
            "client_msg_id": pc.binary_join_element_wise(pa.scalar("sim"), pc.cast(pa.array(index), pa.string()), pa.scalar("-")),
            "type": _dictionary(red.astype(np.int64), pa.array(["text", "red_packet"])),
            "body": _strings(body, pa.concat_arrays([self.texts, pa.array(red_bodies, pa.string())])),
            "sent_at_ms": sent,
            "created_at_ms": t,
        })
        mailbox, receivers = self._mailbox(mid, seq, t, conversation, sender, in_group, group, pair)
        packets, grabs = self._red_packets(red, mid, t, conversation, sender, in_group, group, totals, counts)
        # content sorted by conversation and seq: a history page reads few row groups
        content = content.take(pa.array(np.lexsort((seq, conversation))))
        return Slice(content, mailbox, self._reads(receivers), packets, grabs)

    def _mailbox(self, mid, seq, t, conversation, sender, in_group, group, pair):
        """Rows per message: 2 for one-to-one, one per member below the threshold, one owned by
        the group above it (read fan-out). Sorted by (conversation, seq), as the lake keeps
        them (core/storage/lake.py LAYOUT); returns the table and (is 'in', owner, conversation, seq, time) per row for the reads."""
        pop, s = self.pop, self.s
        users = len(pop.activity)
        size = pop.group_sizes[group]
        shared = in_group & (size >= s.read_fan_out_threshold)
        direct = np.flatnonzero(~in_group)  # two rows each: both sides
        small = np.flatnonzero(in_group & ~shared)  # a row per member
        big = np.flatnonzero(shared)  # one row, owned by the group
        sizes = size[small]
        first_row = np.cumsum(sizes) - sizes
        small_owner = pop.members[np.repeat(pop.group_offsets[group[small]] - first_row, sizes) + np.arange(sizes.sum())]
        message = np.concatenate([np.repeat(direct, 2), np.repeat(small, sizes), big])
        owner = np.concatenate([pop.pairs[pair[direct]].ravel(), small_owner, users + group[big]])
        conv = conversation[message]
        # rows of one conversation already come in seq order: a stable sort keeps it
        order = np.argsort(conv, kind="stable")
        message, owner, conv = message[order], owner[order], conv[order]
        box = np.where(owner >= users, 2, np.where(owner == sender[message], 0, 1))  # out, in, group
        rows = {
            "owner_uid": _strings(owner, self.owner_names),
            "conversation": _strings(conv, pop.conversations),
            "mid": mid[message],
            "seq": seq[message],
            "box": _dictionary(box, pa.array(["out", "in", "group"])),
            # 'out': the conversation, else the sender (peers index users, then conversations)
            "peer": _strings(np.where(box == 0, users + conv, sender[message]), self.peer_names),
            "created_at_ms": t[message],
        }
        receivers = (box == 1, owner, conv, seq[message], t[message])
        return pa.table(rows), receivers

    def _reads(self, receivers) -> pa.Table:
        """Some receivers read a while later, up to the message they saw (read positions)."""
        is_in, owner, conversation, seq, t = receivers
        rng = self.rng
        chosen = np.flatnonzero(is_in & (rng.random(len(is_in)) < self.s.read_probability))
        delay = np.minimum(rng.lognormal(11.5, 1.6, len(chosen)), 3 * 86_400_000).astype(np.int64)  # median ~2 min
        return pa.table({
            "owner_uid": _strings(owner[chosen], self.pop.names),
            "conversation": _strings(conversation[chosen], self.pop.conversations),
            "read_seq": seq[chosen],
            "at_ms": t[chosen] + delay,
        })

    def _red_packets(self, red, mid, t, conversation, sender, in_group, group, totals, counts):
        pop, rng = self.pop, self.rng
        packets, grabs = [], []
        for i in np.flatnonzero(red):
            total, count = int(totals[i]), int(counts[i])
            if in_group[i]:
                g = group[i]
                pool = pop.members[pop.group_offsets[g] : pop.group_offsets[g] + pop.group_sizes[g]]
                pool = pool[pool != sender[i]]
            else:
                pool = pop.pairs[conversation[i]][pop.pairs[conversation[i]] != sender[i]]
            grabbers = rng.choice(pool, min(len(pool), int(count * rng.uniform(0.6, 1.5)) + 1), replace=False)
            left_cents, left_count, at = total, count, int(t[i])
            for user in grabbers[:count]:
                share = left_cents if left_count == 1 else int(rng.integers(1, max(2, 2 * left_cents // left_count)))
                share = min(share, left_cents - (left_count - 1))
                at += int(rng.lognormal(8.5, 1.5))
                grabs.append((int(mid[i]), "grab", pop.names[int(user)].as_py(), share, at))
                left_cents, left_count = left_cents - share, left_count - 1
            if left_cents:
                grabs.append((int(mid[i]), "refund", "", left_cents, int(t[i]) + 86_400_000))
            packets.append((int(mid[i]), pop.conversations[int(conversation[i])].as_py(), pop.names[int(sender[i])].as_py(),
                            total, count, "恭喜发财", int(t[i]) + 86_400_000))
        packet_table = pa.table({name: [p[j] for p in packets] for j, name in enumerate(
            ["mid", "conversation", "sender", "total_cents", "count", "greeting", "expires_at_ms"])},
            schema=pa.schema([("mid", pa.int64()), ("conversation", pa.string()), ("sender", pa.string()),
                              ("total_cents", pa.int64()), ("count", pa.int64()), ("greeting", pa.string()),
                              ("expires_at_ms", pa.int64())]))
        grab_table = pa.table({name: [g[j] for g in grabs] for j, name in enumerate(["mid", "kind", "user", "cents", "at_ms"])},
                              schema=pa.schema([("mid", pa.int64()), ("kind", pa.string()), ("user", pa.string()),
                                                ("cents", pa.int64()), ("at_ms", pa.int64())]))
        return packet_table, grab_table

    def group_events(self) -> pa.Table:
        pop = self.pop
        gid_of = np.repeat(np.arange(len(pop.group_sizes)), pop.group_sizes)
        first = pop.group_offsets
        roles = np.full(len(pop.members), "member", dtype=object)
        roles[first] = "owner"
        gids = pa.array(pop.gids)
        return pa.table({
            "gid": pc.take(gids, gid_of), "user": pc.take(pop.names, pop.members), "kind": pa.array(["joined"] * len(pop.members)),
            "role": pa.array(roles.tolist()), "actor": pc.take(pop.names, pop.members[first[gid_of]]),
            "at_ms": np.full(len(pop.members), self.s.start_ms - 86_400_000, dtype=np.int64),
        })

    def live_rooms(self) -> pa.Table:
        """Per room and minute: viewers, messages, gifts, dropped. Evening broadcasts whose
        audience builds to a peak and fades; a hit room peaks near a million viewers."""
        s, rng = self.s, self.rng
        rows: dict[str, list] = {"room": [], "minute_ms": [], "viewers": [], "messages": [], "gifts": [], "dropped": []}
        for room in range(s.live_rooms):
            peak = int(min(1_000_000, 200 * rng.pareto(0.9) + 300)) if room else 1_000_000
            for day in range(s.days):
                start = s.start_ms + day * 86_400_000 + int(rng.uniform(18, 21) * 3_600_000)
                minutes = int(rng.uniform(60, 180))
                shape = np.sin(np.linspace(0.05, math.pi - 0.05, minutes)) ** 1.5
                viewers = np.minimum(peak * shape * rng.lognormal(0, 0.05, minutes), 1_000_000).astype(np.int64)
                messages = (viewers ** 0.7 * rng.lognormal(0, 0.3, minutes)).astype(np.int64)
                cap = 60 * 40  # what one viewer's delivery cap lets through per minute
                rows["room"] += [f"room{room:02d}"] * minutes
                rows["minute_ms"] += (start + np.arange(minutes) * 60_000).tolist()
                rows["viewers"] += viewers.tolist()
                rows["messages"] += messages.tolist()
                rows["gifts"] += (messages * 0.02).astype(np.int64).tolist()
                rows["dropped"] += np.maximum(messages - cap, 0).tolist()
        return pa.table(rows)


DAY_MS = 86_400_000
FIRST_NAMES = pa.array(["Anna", "Ben", "Chen", "Dana", "Emre", "Fatima", "Giulia", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
                        "Mei", "Nikolai", "Olga", "Priya", "Quinn", "Rafael", "Sara", "Tomás", "Uma", "Viktor", "Wei", "Yusuf"])
LAST_NAMES = pa.array(["Ahmed", "Berg", "Costa", "Dubois", "Eze", "Fischer", "García", "Huang", "Ito", "Jensen", "Kim",
                       "Lopez", "Müller", "Novak", "Okafor", "Park", "Rossi", "Schmidt", "Tanaka", "Wang", "Yilmaz", "Zhou"])
CUSTOM = pa.array(["{}", "{}", "{}", '{"locale":"en-GB"}', '{"locale":"de-DE"}', '{"plan":"pro"}',
                   '{"locale":"zh-CN","plan":"pro"}'])  # compact JSON, as social_records writes it
NOTES = pa.array(["", "", "", "hi, it's me!", "we met at the conference", "from the football group", "add me?",
                  "saw you in the group chat", "your colleague from the new office"])
CONTACT_KINDS = pa.array(["requested", "accepted", "declined", "cancelled", "removed"])
BLOCK_KINDS = pa.array(["blocked", "unblocked"])
ACCOUNT_KINDS = pa.array(["created", "updated", "deactivated", "reactivated"])
NEVER = np.iinfo(np.int64).max
# the order of one millisecond's changes: a request before its answer, a block (with the
# removal it records) before an unblock, nothing after a deactivation
CHANGE_ORDER = {"created": 0, "updated": 1, "reactivated": 1, "requested": 2, "accepted": 3, "declined": 3, "cancelled": 3,
                "removed": 4, "blocked": 4, "deactivated": 5, "unblocked": 5}


@dataclass
class SocialGraph:
    """The social graph's history: the rows a live server writes through
    core/storage/social_records.py, one table each, rows in time order."""

    accounts: pa.Table  # im_account_events: user, kind, display_name, avatar_url, custom (JSON text), at_ms
    contacts: pa.Table  # im_contact_events: user (who acted), peer, kind, note, at_ms
    blocks: pa.Table  # im_block_events: user (the blocker), peer, kind, at_ms

    def tables(self) -> dict[str, pa.Table]:
        return {ACCOUNT_EVENTS: self.accounts, CONTACT_EVENTS: self.contacts, BLOCK_EVENTS: self.blocks}

    def changes(self) -> list[dict]:
        """What users and operators did, one row (a dict with its ``table``) per action, in the
        order they did it: the rows as recorded, less the removals blocks recorded (a block
        does that itself)."""
        rows = [{"table": name, **row} for name, table in self.tables().items() for row in table.to_pylist()]
        blocks = {(row["user"], row["peer"], row["at_ms"]) for row in rows if row["kind"] == "blocked"}
        rows = [row for row in rows
                if not (row["table"] == CONTACT_EVENTS and (row["user"], row["peer"], row["at_ms"]) in blocks)]
        return sorted(rows, key=lambda row: (row["at_ms"], CHANGE_ORDER[row["kind"]]))


def _delay(rng: np.random.Generator, median_ms: float, sigma: float, size: int) -> np.ndarray:
    return rng.lognormal(math.log(median_ms), sigma, size).astype(np.int64)


def _attach(rng: np.random.Generator, sent: np.ndarray, uniform_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Whom each request goes to, by arrival position: account ``p`` sends ``sent[p]``
    requests, each to an earlier account, chosen at random (``uniform_share``) or as one end of
    an earlier request picked at random, that is in proportion to the requests an account has
    sent and had (preferential attachment). Returns (sender, target) positions, one per request.

    A request may copy the target of an earlier one that copies another: those chains are
    resolved all at once by pointer jumping (each round halves them), not request by request.
    """
    n = len(sent)
    src = np.repeat(np.arange(n), sent)
    earlier = (np.cumsum(sent) - sent)[src]  # requests sent before this sender arrived
    r = len(src)
    target = np.full(r, -1, dtype=np.int64)
    pointer = np.full(r, -1, dtype=np.int64)
    uniform = (rng.random(r) < uniform_share) | (earlier == 0)
    target[uniform] = (rng.random(int(uniform.sum())) * src[uniform]).astype(np.int64)
    pick = (rng.random(r) * earlier).astype(np.int64)  # an earlier request
    sender_end = ~uniform & (rng.random(r) < 0.5)
    target[sender_end] = src[pick[sender_end]]
    receiver_end = ~uniform & ~sender_end
    pointer[receiver_end] = pick[receiver_end]
    while (waiting := np.flatnonzero(pointer >= 0)).size:
        hop = pointer[waiting]
        found, further = target[hop], pointer[hop]  # read before this round writes
        known = found >= 0
        target[waiting] = found
        pointer[waiting] = np.where(known, -1, further)
    return src, target


def social_graph(s: Scenario, pop: Population) -> SocialGraph:
    """Accounts, contact requests and their fates, removals and blocks, from ``social_days``
    before the messages start to their end. Every message sender has an account before the
    messages start; late accounts sign up while they run. Nothing a live server would refuse
    is written: no request over ``contacts_max``, nothing involving an account once it is
    deactivated, no block between two users who message each other. Its own random stream:
    the messages of a seed stay as they were."""
    rng = np.random.default_rng([s.seed, 17])
    end = s.start_ms + s.days * DAY_MS
    old, late = s.users, round(s.users * s.late_account_share)
    n = old + late
    names = pa.concat_arrays([pop.names, pa.array([f"u{i:07d}" for i in range(old, n)], pa.string())])
    # who signs up when (by arrival position): the active users mostly early, sign-ups speeding up
    arrival = np.concatenate([np.argsort(-pop.activity * rng.lognormal(0, 1, old), kind="stable"), np.arange(old, n)])
    history = s.social_days * DAY_MS
    joined = np.concatenate([
        s.start_ms - history + (history * np.sqrt(np.sort(rng.random(old)))).astype(np.int64),
        s.start_ms + np.sort((rng.random(late) * s.days * DAY_MS).astype(np.int64)),
    ])
    created = np.empty(n, dtype=np.int64)
    created[arrival] = joined

    # accounts: created; some renamed later; a few late ones deactivated (half of them back)
    first, last = rng.integers(0, len(FIRST_NAMES), n), rng.integers(0, len(LAST_NAMES), n)
    display = pc.binary_join_element_wise(pc.take(FIRST_NAMES, first), pc.take(LAST_NAMES, last), pa.scalar(" "))
    urls = pc.binary_join_element_wise(pa.scalar("https://avatars.example.com/"), names, pa.scalar(".png"), pa.scalar(""))
    avatar = pc.if_else(pa.array(rng.random(n) < 0.6), urls, "")
    custom = _strings(rng.integers(0, len(CUSTOM), n), CUSTOM)
    renamed_at = created + _delay(rng, 7 * DAY_MS, 1.0, n)
    renamed = np.flatnonzero((rng.random(n) < 0.1) & (renamed_at <= end))
    new_display = pc.binary_join_element_wise(pc.take(display, pa.array(renamed)), pa.scalar("✨"), pa.scalar(" "))
    leaving_at = created + _delay(rng, DAY_MS, 1.0, n)
    leaving = np.flatnonzero((np.arange(n) >= old) & (rng.random(n) < s.deactivate_share) & (leaving_at <= end))
    leaving = np.setdiff1d(leaving, renamed)  # their profile is still the one they signed up with
    deactivated = np.full(n, NEVER, dtype=np.int64)
    deactivated[leaving] = leaving_at[leaving]
    back_at = leaving_at[leaving] + _delay(rng, DAY_MS, 1.0, len(leaving))
    returns = (rng.random(len(leaving)) < 0.5) & (back_at <= end)
    back, back_at = leaving[returns], back_at[returns]
    who = np.concatenate([np.arange(n), renamed, leaving, back])
    accounts = pa.table({
        "user": _strings(who, names),
        "kind": _strings(np.repeat(np.arange(4), [n, len(renamed), len(leaving), len(back)]), ACCOUNT_KINDS),
        "display_name": pa.concat_arrays([display, new_display, pc.take(display, pa.array(np.concatenate([leaving, back])))]),
        "avatar_url": pc.take(avatar, pa.array(who)),
        "custom": pc.take(custom, pa.array(who)),
        "at_ms": np.concatenate([created, renamed_at[renamed], leaving_at[leaving], back_at]),
    })

    # contact requests: each new account asks a few earlier ones
    sent = np.minimum(rng.poisson(s.contact_requests, n), np.arange(n))
    src, target = _attach(rng, sent, s.uniform_share)
    once = np.sort(np.unique(target * n + src, return_index=True)[1])  # the first request of a pair only
    a, b = arrival[src[once]], arrival[target[once]]  # user indices: a asks b
    r = len(a)

    def active(t: np.ndarray) -> np.ndarray:  # both still have an active account at t
        return (t <= end) & (t < deactivated[a]) & (t < deactivated[b])

    asked = created[a] + _delay(rng, 3 * 3_600_000, 1.5, r)
    answered = asked + _delay(rng, 2 * 3_600_000, 1.5, r)
    fate = rng.random(r)
    requested = active(asked)
    answered_in_time = requested & active(answered)
    accepted = answered_in_time & (fate < s.accept_share)
    # contacts_max: a request that would take either side past it is refused (conservatively
    # counted: contacts removed later do not free a place)
    order = np.flatnonzero(accepted)[np.argsort(answered[accepted], kind="stable")]
    rank = _rank_within(np.stack([a[order], b[order]], axis=1).ravel()).reshape(-1, 2).max(axis=1)
    over = order[rank >= s.contacts_max]
    requested[over] = accepted[over] = answered_in_time[over] = False
    declined = answered_in_time & (fate >= s.accept_share) & (fate < s.accept_share + 0.1)
    cancelled = answered_in_time & (fate >= s.accept_share + 0.1) & (fate < s.accept_share + 0.15)

    # later: some contacts removed, some ended by a block; some declined senders blocked
    chatting = np.isin(np.minimum(a, b) * n + np.maximum(a, b), pop.pairs.min(axis=1) * n + pop.pairs.max(axis=1))
    later = answered + _delay(rng, 10 * DAY_MS, 1.2, r)
    fate = rng.random(r)
    ended = accepted & active(later)
    removed = ended & (fate < s.remove_share)
    block_contact = ended & ~chatting & (fate >= s.remove_share) & (fate < s.remove_share + s.block_share)
    after_decline = answered + _delay(rng, 30_000, 1.0, r)
    block_sender = declined & ~chatting & active(after_decline) & (rng.random(r) < 0.2)
    side = rng.random(r) < 0.5  # who removes or blocks a contact
    actor, other = np.where(side, a, b), np.where(side, b, a)

    blocker = np.concatenate([actor[block_contact], b[block_sender]])
    blockee = np.concatenate([other[block_contact], a[block_sender]])
    blocked_at = np.concatenate([later[block_contact], after_decline[block_sender]])
    unblocked_at = blocked_at + _delay(rng, 5 * DAY_MS, 1.0, len(blocked_at))
    lifted = (rng.random(len(blocked_at)) < 0.2) & (unblocked_at <= end)
    blocks = pa.table({
        "user": _strings(np.concatenate([blocker, blocker[lifted]]), names),
        "peer": _strings(np.concatenate([blockee, blockee[lifted]]), names),
        "kind": _strings(np.repeat([0, 1], [len(blocker), int(lifted.sum())]), BLOCK_KINDS),
        "at_ms": np.concatenate([blocked_at, unblocked_at[lifted]]),
    })

    # the contact rows, as the live server records each change (a block of a contact records
    # its removal too, by the blocker, at the same moment)
    parts = [  # (kind, user, peer, at_ms, which requests)
        (0, a, b, asked, requested), (1, b, a, answered, accepted), (2, b, a, answered, declined),
        (3, a, b, answered, cancelled), (4, actor, other, later, removed), (4, actor, other, later, block_contact),
    ]
    kinds = np.concatenate([np.full(int(mask.sum()), kind) for kind, *_, mask in parts])
    notes = np.zeros(len(kinds), dtype=np.int64)  # the requests come first; only they carry a note
    notes[: int(requested.sum())] = rng.integers(0, len(NOTES), int(requested.sum()))
    contacts = pa.table({
        "user": _strings(np.concatenate([user[mask] for _, user, _, _, mask in parts]), names),
        "peer": _strings(np.concatenate([peer[mask] for _, _, peer, _, mask in parts]), names),
        "kind": _strings(kinds, CONTACT_KINDS),
        "note": _strings(notes, NOTES),
        "at_ms": np.concatenate([at[mask] for *_, at, mask in parts]),
    })
    by_time = [("at_ms", "ascending")]
    return SocialGraph(accounts.sort_by(by_time), contacts.sort_by(by_time), blocks.sort_by(by_time))


@dataclass(frozen=True)
class Written:
    messages: int
    mailbox_rows: int
    other_rows: int
    seconds: float


def to_archive(lake: LakeConfig | str | Path, scenario: Scenario, progress: Callable[[int], None] | None = None) -> Written:
    """Simulate into a lake (a LakeConfig, a catalog string, or a folder for the embedded
    layout; made if new); returns what was written and how fast. Each time slice is one
    transaction; the next slice is made while a second thread inserts the last one (DuckDB
    works without the GIL). The rows go in once each: simulate into a lake without messages."""
    started = time.perf_counter()
    config = lake if isinstance(lake, LakeConfig) else LakeConfig.from_url(lake)
    generator = Generator(scenario)
    mailbox_rows = other = 0
    db = connect(config)
    try:
        with ThreadPoolExecutor(1) as pool:
            writer = db.cursor()  # a connection is one thread's
            writer.execute(f"USE {LAKE}")  # a cursor starts in the default database
            writing = None  # the previous slice, inserted while this one is made
            for k in range(generator.slices()):
                part = generator.slice(k)
                if writing:
                    writing.result()
                tables = {CONTENT: part.content, MAILBOX: part.mailbox, READ_EVENTS: part.reads,
                          PACKETS_TABLE: part.packets, GRAB_EVENTS_TABLE: part.grabs}
                writing = pool.submit(archive.write_tables, writer, tables)
                mailbox_rows += part.mailbox.num_rows
                other += part.reads.num_rows + part.packets.num_rows + part.grabs.num_rows
                if progress:
                    writing.add_done_callback(lambda _, n=part.content.num_rows: progress(n))
            if writing:
                writing.result()
            writer.close()
        rest = {EVENTS_TABLE: generator.group_events(), ROOMS: generator.live_rooms(),
                **social_graph(scenario, generator.pop).tables()}
        other += archive.write_tables(db, rest)
    finally:
        db.close()
    return Written(scenario.messages, mailbox_rows, other, time.perf_counter() - started)


CONTACT_OPS = {"requested": "contact_request", "accepted": "contact_accept", "declined": "contact_decline",
               "cancelled": "contact_cancel", "removed": "contact_remove", "blocked": "block", "unblocked": "unblock"}


async def through_gateway(url: str, token_for: Callable[[str], str], scenario: Scenario,
                          progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Play the scenario through a running imflow with real clients: first the social graph's
    contact requests, answers, removals and blocks in their order (accounts are the server's:
    with registered accounts, create them first), then the first messages: groups are created
    by their owners, messages sent in time order (without waiting real time), red packets sent
    and grabbed, and receivers report reading now and then. For small scales: every user is a
    WebSocket connection. Returns counts of what was done (``contact_changes``, ``messages``...)."""
    from imflow.client import Client, ClientError

    generator = Generator(scenario)
    pop, rng = generator.pop, generator.rng
    names = pop.names.to_pylist()
    clients: dict[str, Client] = {}

    async def client(user: int | str) -> Client:
        """The user's connection (a user index, or the name of a user the messages do not know)."""
        name = names[user] if isinstance(user, int) else user
        if name not in clients:
            clients[name] = await Client.connect(url, token_for(name))
        return clients[name]

    counts = {"contact_changes": 0, "messages": 0, "groups": 0, "red_packets": 0, "grabs": 0, "reads": 0}
    gids: dict[int, str] = {}
    try:
        for change in social_graph(scenario, pop).changes():
            if change["table"] == ACCOUNT_EVENTS:
                continue  # the admin API's (see the docstring)
            frame = {"op": CONTACT_OPS[change["kind"]], "user": change["peer"]}
            if change["kind"] == "requested":
                frame["note"] = change["note"]
            await (await client(change["user"])).request(frame)
            counts["contact_changes"] += 1
        for k in range(generator.slices()):
            part = generator.slice(k)
            content = part.content.to_pylist()
            for row in content:
                sender = names.index(row["sender"]) if row["sender"] in names else 0
                target: dict
                if gid := group_id(row["conversation"]):
                    g = int(gid.removeprefix("sim"))  # the simulator's gids are sim00042
                    if g not in gids:
                        members = [names[m] for m in pop.members[pop.group_offsets[g] : pop.group_offsets[g] + pop.group_sizes[g]]]
                        owner = await client(names.index(members[0]))
                        made = await owner.request({"op": "create_group", "name": f"sim group {g}", "members": members[1:1000]})
                        for start in range(1000, len(members), 1000):
                            await owner.request({"op": "add_members", "gid": made["gid"], "users": members[start : start + 1000]})
                        gids[g] = made["conversation"]
                        counts["groups"] += 1
                    target = {"conversation": gids[g]}
                else:
                    a, b = row["conversation"].split(":")[1:]
                    target = {"to": b if row["sender"] == a else a}
                sending = await client(sender)
                body = orjson.loads(row["body"])
                sent = await sending.send({**target, "type": row["type"], "body": body}, cmid=row["client_msg_id"])
                counts["messages"] += 1
                if row["type"] == "red_packet":
                    counts["red_packets"] += 1
                    conversation = sent["conversation"]
                    for grabber in rng.choice(len(names), min(3, len(names)), replace=False):
                        try:
                            await (await client(int(grabber))).request(
                                {"op": "red_packet.grab", "conversation": conversation, "mid": sent["mid"]})
                            counts["grabs"] += 1
                        except ClientError:
                            pass  # not a member, or nothing left: refused cleanly
                if rng.random() < scenario.read_probability:
                    reader = rng.choice(len(names))
                    try:
                        await (await client(int(reader))).read(sent["conversation"], sent["seq"])
                        counts["reads"] += 1
                    except ClientError:
                        pass  # not in that conversation
                if progress:
                    progress(1)
    finally:
        for connection in clients.values():
            await connection.close()
    return counts
