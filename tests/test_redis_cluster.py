"""imflow on a Redis Cluster: the URL, the key scheme (every script's keys in one slot), the
client's pool, pub/sub across nodes (a gateway's sharded channel, wherever its slot lives), and a
basic chat, unread and group run on both a cluster and a single redis-server.

The cluster tests need IMFLOW_TEST_REDIS_URL=redis+cluster://… (scripts/test starts one); the
whole real-stack suite runs on it too, and the ``slot_guard`` fixture of conftest.py checks the
keys of every script call made in the test process, on fakeredis and single servers as well.
"""

from __future__ import annotations

import asyncio
import inspect
import string
import uuid
from typing import Any

import orjson
import pytest
import redis as redis_sync
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from imflow.core.models import direct_conversation, group_conversation
from imflow.core.notifications import Sent
from imflow.core.plugin_types import PreparedFrame
from imflow.core.revocation import Revocation
from imflow.core.storage import gateway_events, keys, redis_client, revocations
from imflow.core.storage.scripts import script
from imflow.gateway.hub import Hub
from imflow.testing import eventually

from stacks import connect, real_stack

NAMES = st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=40)
OWNERS = {"user": keys.user_tag, "conversation": keys.conversation_tag, "gid": keys.group_tag}


def slot(key: str) -> int:
    return key_slot(key.encode())


# -- the key scheme


def key_builders() -> list[tuple[str, Any]]:
    """Every builder in core/storage/keys.py whose first parameter names a user, a conversation
    or a group: its keys belong to that owner (a script may take any of them together)."""
    found = []
    for name, builder in inspect.getmembers(keys, inspect.isfunction):
        params = list(inspect.signature(builder).parameters)
        if params and params[0] in OWNERS and builder is not OWNERS[params[0]]:
            found.append((name, builder))
    return found


def test_the_key_builders_are_found() -> None:
    names = {name for name, _ in key_builders()}
    assert {"inbox", "account", "contacts", "conversation_log", "dedup", "group_members", "user_state_keys"} <= names


@given(owner=NAMES, other=NAMES)
def test_every_key_of_one_owner_is_in_that_owners_slot(owner: str, other: str) -> None:
    for name, builder in key_builders():
        first, *rest = inspect.signature(builder).parameters
        built = builder(owner, *[other] * len(rest))
        for key in built if isinstance(built, list) else [built]:
            assert slot(key) == slot(OWNERS[first](owner)), f"keys.{name}({owner!r}, …) = {key!r}"


def test_a_gateways_sweep_keys_share_the_registrys_slot() -> None:
    """gateway_claim.lua and gateway_swept.lua take the registry and a sweep's lock together."""
    assert slot(keys.gateway_sweeping("gw-7")) == slot(keys.gateways_alive())


async def test_a_script_across_slots_is_caught_on_fakeredis_and_refused_by_a_cluster(cluster_url, slot_guard) -> None:
    across = [keys.unread_total("ann"), keys.unread_total("bob")]
    assert slot(across[0]) != slot(across[1])
    embedded = redis_client.connect(None)
    try:
        with pytest.raises(AssertionError, match="slots"):
            await script(embedded, "raise_field")(keys=across, args=["f", 1])
    finally:
        slot_guard.violations.clear()  # made on purpose
        await embedded.aclose()
    cluster = redis_client.connect(cluster_url)
    try:
        with pytest.raises((RedisClusterException, ResponseError)):
            await script(cluster, "raise_field")(keys=across, args=["f", 1])
    finally:
        await cluster.aclose()


# -- the client


def test_a_cluster_url_names_its_seed_nodes_and_options() -> None:
    nodes, options = redis_client._cluster_url("redis+cluster://me:s3cret@10.0.0.1:7000,10.0.0.2:7001?socket_timeout=3")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert (options["username"], options["password"], options["socket_timeout"]) == ("me", "s3cret", 3.0)
    assert redis_client._cluster_url("rediss+cluster://h:1")[1]["ssl"] is True
    for wrong in ("redis+cluster://", "redis+cluster://h:1/3", "redis+cluster://h"):
        with pytest.raises(ValueError):
            redis_client._cluster_url(wrong)


async def test_a_plain_redis_url_of_a_cluster_node_is_refused_clearly(cluster_url) -> None:
    node = cluster_url.split("://", 1)[1].split(",")[0]
    for url in (f"redis://{node}/0", f"redis://{node}/3"):
        client = redis_client.connect(url)
        try:
            with pytest.raises(redis_client.ClusterNodeError, match=f"redis\\+cluster://{node}"):
                await client.ping()
        finally:
            await client.aclose()


async def test_commands_beyond_the_pool_wait_for_a_connection(cluster_url) -> None:
    """redis-py's cluster pool fails when a node's connections are all busy; ours waits."""
    redis = redis_client.connect(cluster_url, max_connections=2)
    try:
        await redis_client.flush(redis)
        counted = await asyncio.gather(*(redis.incr(keys.unread_total(f"u{i % 50}")) for i in range(500)))
        assert len(counted) == 500

        async def transaction(i: int) -> list[Any]:
            async with redis.pipeline(transaction=True) as pipe:  # MULTI/EXEC on the slot's node
                pipe.hset(keys.group_members(f"g{i}"), "ann", "owner")
                pipe.hexists(keys.group_members(f"g{i}"), "ann")
                pipe.hgetall(keys.group_members(f"g{i}"))
                return await pipe.execute()

        assert await asyncio.gather(*(transaction(i) for i in range(100))) == [[1, True, {b"ann": b"owner"}]] * 100
        assert sum([await redis.get(keys.unread_total(f"u{i}")) == b"10" for i in range(50)]) == 50
    finally:
        await redis.aclose()


async def test_a_fresh_clients_first_commands_all_go_through(cluster_url) -> None:
    """Many commands at once on clients that have not learnt the slots yet (a gateway's first
    burst): none fails while the client initialises."""
    redis_client.flush_sync(cluster_url)
    clients = [redis_client.connect(cluster_url) for _ in range(20)]
    try:
        counted = await asyncio.gather(*(clients[i % 20].incr(keys.unread_total(f"u{i}")) for i in range(1000)))
        assert counted == [1] * 1000
    finally:
        for client in clients:
            await client.aclose()


async def test_flush_empties_every_primary(cluster_url) -> None:
    redis = redis_client.connect(cluster_url)
    try:
        await asyncio.gather(*(redis.set(keys.unread_total(f"u{i}"), 1) for i in range(100)))
        sizes = await redis.dbsize(target_nodes=redis.PRIMARIES)
        assert sizes >= 100 and len({redis.get_node_from_key(keys.unread_total(f"u{i}")).name for i in range(100)}) == 3
        await redis_client.flush(redis)
        assert await redis.dbsize(target_nodes=redis.PRIMARIES) == 0
    finally:
        await redis.aclose()


# -- pub/sub across nodes


class Heard:
    """Stands in for a gateway connection: keeps the frames and revocations it is given."""

    slow = False  # never behind
    behind: Any = None  # set by the hub

    def __init__(self, user: str) -> None:
        self.user, self.id = user, uuid.uuid4().hex
        self.frames: list[dict[str, Any]] = []
        self.revocations: list[Revocation] = []

    def push_raw(self, data: bytes | PreparedFrame, priority: Any = None) -> None:
        self.frames.append(orjson.loads(data.data if isinstance(data, PreparedFrame) else data))

    def revoked_by(self, revoked: Revocation) -> bool:
        self.revocations.append(revoked)
        return False

    def check_slow(self, now: float) -> None:
        """Never slow."""


def on_node(node: Any, *command: Any) -> Any:
    """One command on one node of the cluster, bypassing the cluster client's routing."""
    with redis_sync.Redis(node.host, node.port) as client:
        return client.execute_command(*command)


def gateway_on(redis: Any, not_on: set[str]) -> str:
    """A gateway name whose channel's slot lives on none of the nodes ``not_on``, and holds no key."""
    for i in range(1000):
        node = f"gw-{uuid.uuid4().hex[:6]}-{i}"
        channel = gateway_events.own_channel(node)
        owner = redis.get_node_from_key(channel)
        if owner.name not in not_on and not on_node(owner, "CLUSTER", "COUNTKEYSINSLOT", slot(channel)):
            return node
    raise AssertionError("no such gateway name")


@pytest.fixture
def cluster(cluster_url: str, real_redis: Any) -> Any:
    """The emptied test Redis, a cluster here."""
    return real_redis


async def test_a_gateway_hears_what_a_worker_on_another_node_publishes(cluster, cluster_url) -> None:
    seed = cluster.get_node_from_key(keys.inbox("x"))  # a node of the cluster the worker starts from
    node = gateway_on(cluster, not_on={seed.name})
    owner = cluster.get_node_from_key(gateway_events.own_channel(node))
    hub = Hub(cluster, node)
    await hub.start()
    worker = redis_client.connect(f"redis+cluster://{seed.host}:{seed.port}")
    plain = Redis(host=seed.host, port=seed.port)  # one node, no routing: PUBLISH goes to it alone
    try:
        assert hub.listening
        ann = Heard("ann")
        hub.add(ann)
        await gateway_events.notify(worker, node, "ann", Sent("c-1", direct_conversation("ann", "bob"), 7, 1))
        await eventually(lambda: _true(ann.frames), timeout=10)
        assert ann.frames[0]["op"] == "sent" and ann.frames[0]["mid"] == 7
        # the order to every gateway: classic PUBLISH on one node reaches a subscriber on another
        assert owner.name != seed.name
        await revocations.announce(plain, Revocation("ann", 5).encode())
        await eventually(lambda: _true(ann.revocations), timeout=10)
        assert ann.revocations == [Revocation("ann", 5)]
    finally:
        await hub.stop()
        await worker.aclose()
        await plain.aclose()


async def _true(value: Any) -> Any:
    return value


def move_slot(cluster: Any, number: int, to: Any) -> None:
    """Give an empty slot to the node ``to`` (CLUSTER SETSLOT … NODE on every primary, the new
    owner first), as a resharding does once the slot's keys have moved."""
    target = redis_client.text(on_node(to, "CLUSTER", "MYID"))
    for node in sorted(cluster.get_primaries(), key=lambda n: n.name != to.name):
        on_node(node, "CLUSTER", "SETSLOT", number, "NODE", target)


async def test_a_gateway_follows_its_channel_when_the_slot_moves(cluster) -> None:
    node = gateway_on(cluster, not_on=set())
    channel_slot = slot(gateway_events.own_channel(node))
    home = cluster.get_node_from_key(gateway_events.own_channel(node))
    elsewhere = next(n for n in cluster.get_primaries() if n.name != home.name)
    hub = Hub(cluster, node)
    await hub.start()
    ann = Heard("ann")
    hub.add(ann)
    worker = redis_client.connect(f"redis+cluster://{home.host}:{home.port}")
    try:
        move_slot(cluster, channel_slot, elsewhere)  # the old owner unsubscribes the hub (sunsubscribe)

        async def heard() -> bool:  # published again until the hub has subscribed on the new owner
            await gateway_events.notify(worker, node, "ann", Sent("c-1", direct_conversation("ann", "bob"), 7, 1))
            await asyncio.sleep(0.05)
            return bool(ann.frames)

        await eventually(heard, timeout=20, interval=0.2)
        assert hub.listening
    finally:
        move_slot(cluster, channel_slot, home)
        await hub.stop()
        await worker.aclose()


# -- a basic run on both kinds of Redis


@pytest.fixture(scope="module", params=["cluster", "single"])
def both(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kafka_url: str):
    """A real stack (2 gateways and a worker) on the Redis Cluster, and one on the single redis-server."""
    url = request.getfixturevalue("cluster_url" if request.param == "cluster" else "redis_single_url")
    redis_client.flush_sync(url)
    running = real_stack(tmp_path_factory.mktemp(f"stack-{request.param}"), kafka_url, url)
    yield running
    running.stop()


@pytest.mark.kafka
@pytest.mark.redis
async def test_chat_unread_and_a_group_on_a_cluster_and_a_single_server(both, users) -> None:
    async with (
        await connect(both, users.ann) as ann,
        await connect(both, users.bob, gateway=1) as bob,
        await connect(both, users.cid, gateway=1) as cid,
    ):
        sent = await ann.send_text(users.bob, "hello")
        push = await bob.next_message()
        assert push["message"]["mid"] == sent["mid"] and push["unread"]["count"] == 1
        await bob.read(direct_conversation(users.ann, users.bob), sent["seq"])
        assert (await bob.sync())["total_unread"] == 0

        group = await ann.request({"op": "create_group", "name": "team", "members": [users.bob, users.cid]})
        conversation = group_conversation(group["gid"])
        posted = [await ann.send({"conversation": conversation, "body": {"text": f"m{i}"}}) for i in range(3)]
        for member in (bob, cid):
            got = [await member.next_message() for _ in range(3)]
            assert [m["message"]["seq"] for m in got] == [p["seq"] for p in posted]
        states = {c["conversation"]: c for c in (await cid.sync())["conversations"]}
        assert states[conversation]["unread"] == 3
        page = await cid.history(conversation)
        assert [m["body"]["text"] for m in page["messages"]] == ["m2", "m1", "m0"]
