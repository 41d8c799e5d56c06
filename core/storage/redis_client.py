"""Redis clients: a single server or a Redis Cluster from a URL, or fakeredis (with Lua) for the
embedded default; and the few things that differ between the two kinds of client (publishing to
one gateway, subscribing, emptying the database).

URLs: ``redis://[user:password@]host:port/db`` (``rediss://`` with TLS) names one server;
``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS)
names a Redis Cluster by some of its nodes (the others are discovered). A ``redis://`` URL that
names a cluster node is refused on the first connection with ``ClusterNodeError``.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis as redis_sync
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, _ClusterNodePoolAdapter
from redis.asyncio.connection import parse_url
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline
    from redis.asyncio.connection import AbstractConnection

# Redis is away or cannot take writes for now (down, loading its AOF, a failover, a cluster
# reshuffle, out of memory): wait and try again; never a verdict on the request itself.
STORAGE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # BusyLoadingError (the AOF is loading) is one
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.OutOfMemoryError,
)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # -> the node URLs' scheme
POOL_TIMEOUT_S = 10  # how long a command waits for a free connection before it fails


class ClusterNodeError(redis_errors.RedisError):
    """A ``redis://`` URL names a node of a Redis Cluster: the single-server client would reach
    only that node's slots. Not transient (not in STORAGE_UNAVAILABLE): the URL must change."""


def text(value: bytes | str) -> str:
    """A reply as text: our clients answer bytes (``decode_responses=False``, so message JSON
    passes through untouched); redis-py's types also allow str."""
    return value.decode() if isinstance(value, bytes) else value


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return bool(url) and urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster(redis: Any) -> bool:
    """Whether ``redis`` (a client or a pipeline of one) talks to a Redis Cluster."""
    return isinstance(redis, (RedisCluster, ClusterPipeline))


def connect(url: str | None, max_connections: int = 64) -> Redis:
    """A client for ``url`` (see the module doc); without one, an in-process fakeredis server
    private to this client.

    At most ``max_connections`` commands (or pipelines) are in flight at once (on a cluster: in
    all, and each node's pool holds as many connections); more wait (up to 10 s, then
    ``redis.ConnectionError``) for a free connection instead of failing, so a burst of a
    thousand requests queues rather than errors.
    Raises ValueError for a malformed URL.
    """
    if url and is_cluster_url(url):
        return Cluster.from_cluster_url(url, max_connections)  # type: ignore[return-value]  # the same commands
    if url:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, health_check_interval=30,
            redis_connect_func=_refuse_cluster_node,
        )
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections too
    import fakeredis  # only the embedded default needs it

    return fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(),
        decode_responses=False,
        connection_pool_class=BlockingConnectionPool,
        max_connections=max_connections,
    )


def connect_sync(url: str) -> redis_sync.Redis | SyncRedisCluster:
    """A blocking client for ``url`` (a single server or a cluster), for tools and tests."""
    if is_cluster_url(url):
        nodes, options = _cluster_url(url)
        startup = [SyncClusterNode(host, port) for host, port in nodes]
        return SyncRedisCluster(startup_nodes=startup, **options)
    return redis_sync.Redis.from_url(url)


async def flush(redis: Redis) -> None:
    """Empty the database: every primary's on a cluster (tests and benchmarks start clean)."""
    if is_cluster(redis):
        await redis.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.flushdb()


def flush_sync(url: str) -> None:
    """``flush`` for ``url``, blocking (for fixtures and benchmarks outside an event loop)."""
    with connect_sync(url) as client:
        if isinstance(client, SyncRedisCluster):
            client.flushdb(target_nodes=SyncRedisCluster.PRIMARIES)
        else:
            client.flushdb()


def _cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes (host, port) of a cluster URL and the connection options its user,
    password and query give (as ``redis://`` would); raises ValueError if it names no node."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host_port in filter(None, hosts.split(",")):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: give each node as host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"{url!r} names no node (redis+cluster://host:port[,host:port...])")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"{url!r}: a Redis Cluster has database 0 only")
    first = f"{userinfo}@{hosts.split(',')[0]}" if userinfo else hosts.split(",")[0]
    seed = urlunsplit((CLUSTER_SCHEMES[parts.scheme], first, "", parts.query, ""))  # parsed as redis:// is
    options: dict[str, Any] = {k: v for k, v in parse_url(seed).items() if k not in ("host", "port", "db", "connection_class")}
    if parts.scheme == "rediss+cluster":
        options["ssl"] = True
    return nodes, options


async def _refuse_cluster_node(connection: AbstractConnection) -> None:
    """Connection set-up of the single-server client: the usual handshake, then make sure the
    server is not a cluster node (one INFO per new connection)."""
    try:
        await connection.on_connect()
    except redis_errors.ResponseError as exc:
        if "cluster mode" not in str(exc):  # SELECT of a database other than 0 on a cluster node
            raise
        cluster_enabled = True
    else:
        await connection.send_command("INFO", "cluster")
        cluster_enabled = b"cluster_enabled:1" in await connection.read_response(disable_decoding=True)
    if cluster_enabled:
        where = f"{connection.host}:{connection.port}"  # type: ignore[attr-defined]
        raise ClusterNodeError(f"redis://{where} is a Redis Cluster node: use IMFLOW_REDIS_URL=redis+cluster://{where}")


# One permit per command or pipeline in flight; a command a pipeline runs on its own (a MOVED
# retry) runs under the pipeline's permit, or the two could wait for each other.
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("imflow_redis_permit", default=False)


class _Permits:
    """Bounds the commands in flight on a cluster client: redis-py's cluster pool fails
    (MaxConnectionsError) when a node's connections are all busy; this makes them wait."""

    def __init__(self, count: int) -> None:
        self._free = asyncio.Semaphore(count)

    async def run(self, call: Any) -> Any:
        if _HOLDING.get():
            return await call()
        try:
            async with asyncio.timeout(POOL_TIMEOUT_S):
                await self._free.acquire()
        except TimeoutError:
            raise redis_errors.ConnectionError(f"no Redis Cluster connection free within {POOL_TIMEOUT_S} s") from None
        token = _HOLDING.set(True)
        try:
            return await call()
        finally:
            _HOLDING.reset(token)
            self._free.release()


class Cluster(RedisCluster):
    """redis-py's RedisCluster whose commands wait for a free connection (see ``connect``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._imflow_permits = _Permits(kwargs.get("max_connections", 100))

    @classmethod
    def from_cluster_url(cls, url: str, max_connections: int) -> Cluster:
        """The client for a ``redis+cluster://`` URL; raises ValueError for a malformed one."""
        nodes, options = _cluster_url(url)
        startup = [ClusterNode(host, port) for host, port in nodes]
        return cls(startup_nodes=startup, max_connections=max_connections, health_check_interval=30, **options)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # learn the slots before the command, not inside redis-py's command loop: there, commands
        # that came while the first one initialised the client failed now and then in 8.1
        # (AttributeError on a connection's writer: ~10% of 1,000 concurrent first commands)
        if self._initialize:
            await self.initialize()
        return await self._imflow_permits.run(lambda: super(Cluster, self).execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise redis_errors.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's own pipeline()


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline that waits for a permit; with ``transaction``, a MULTI/EXEC on the node
    of the one slot all its keys are in (redis-py's own cluster transactions queue each command
    through a thread and event loop of its own, and fail on some reply callbacks)."""

    def __init__(self, client: RedisCluster, transaction: Any | None = None) -> None:
        super().__init__(client, transaction=False)  # queued as a plain pipeline; see _transact
        self._imflow_transaction = bool(transaction)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        permits = self.cluster_client._imflow_permits  # type: ignore[attr-defined]
        await self.cluster_client.initialize()  # before running, as Cluster.execute_command does
        if self._imflow_transaction:
            return await permits.run(lambda: self._transact(raise_on_error))
        return await permits.run(lambda: super(_ClusterPipeline, self).execute(raise_on_error, allow_redirections))

    async def _transact(self, raise_on_error: bool) -> list[Any]:
        """MULTI/EXEC of the queued commands on their slot's node; once more if the slot moved.
        Raises CrossSlotTransactionError if their keys are not all in one slot."""
        client = self.cluster_client
        queued = list(self._execution_strategy._command_queue)  # type: ignore[attr-defined]
        try:
            if not queued:
                return []
            await client.initialize()
            slots = {await client._determine_slot(*command.args) for command in queued}
            if len(slots) != 1:
                raise redis_errors.CrossSlotTransactionError("the keys of a transaction must all be in one slot")
            (slot,) = slots
            for attempt in (1, 2):
                node = client.nodes_manager.get_node_from_slot(slot)
                # the node's own pool: connections shared with the cluster client's commands
                on_node = Redis(connection_pool=_ClusterNodePoolAdapter(node))  # type: ignore[arg-type]
                try:
                    async with on_node.pipeline(transaction=True) as pipe:
                        for command in queued:
                            pipe.execute_command(*command.args, **command.kwargs)
                        return await pipe.execute(raise_on_error)
                except (redis_errors.MovedError, redis_errors.AskError):
                    if attempt == 2:
                        raise
                    await client.nodes_manager.initialize()
                except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                    client._initialize = True  # the node may be gone: learn the slots again first
                    raise
            raise AssertionError("unreachable")
        finally:
            await self.reset()


# -- pub/sub: a gateway's own channel is sharded on a cluster (SPUBLISH reaches the one shard
# that owns the channel's slot, not every node); orders to all gateways stay classic PUBLISH,
# which a cluster forwards to every node.


def publish_sharded(target: Redis | Pipeline, channel: str, message: bytes) -> Any:
    """Publish (or queue, on a pipeline) ``message`` on a channel that ``subscribe`` takes as
    ``sharded``: SPUBLISH on a cluster, PUBLISH on a single server. Await it on a client."""
    if is_cluster(target):
        return target.spublish(channel, message)
    return target.publish(channel, message)


class NodePubSub(PubSub):
    """A PubSub on a connection pool of its own to one cluster node; closing it closes the pool."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.connection_pool.aclose()


async def subscribe(redis: Redis, sharded: str, broadcast: str | None = None) -> PubSub:
    """A PubSub subscribed to ``sharded`` (its messages are of type ``smessage`` on a cluster,
    ``message`` on a single server) and to the classic channel ``broadcast`` if given
    (``message``), on one connection; returns once ``sharded``'s subscription is confirmed
    (that confirmation is consumed; ``broadcast``'s comes as the first message).

    On a cluster the connection goes to the node that owns ``sharded``'s slot (a classic
    subscription works on any node). Subscribe messages are not filtered: a ``sunsubscribe`` of
    ``sharded`` means its slot moved, and the caller should subscribe again. Raises
    ``redis.ConnectionError`` when Redis cannot be reached or the slot map was stale (it is
    refreshed: try again), ``redis.TimeoutError`` when the subscription is not confirmed in 10 s.
    """
    if is_cluster(redis):
        cluster: RedisCluster = redis  # type: ignore[assignment]
        try:
            await cluster.initialize()
        except redis_errors.RedisClusterException as exc:  # no node answers (yet)
            raise redis_errors.ConnectionError(str(exc)) from exc
        node = cluster.get_node_from_key(sharded)
        if node is None:  # the slot has no node now (a reshuffle)
            raise redis_errors.ConnectionError(f"no node serves the slot of {sharded} now")
        options = {k: v for k, v in node.connection_kwargs.items() if k != "retry"}
        pubsub: PubSub = NodePubSub(ConnectionPool(connection_class=node.connection_class, **options))
    else:
        pubsub = redis.pubsub()
    try:
        await (pubsub.ssubscribe(sharded) if is_cluster(redis) else pubsub.subscribe(sharded))
        # its confirmation is the first reply (a MOVED error if our slot map was stale), so
        # nothing published meanwhile is read here and lost
        async with asyncio.timeout(POOL_TIMEOUT_S):
            while (await pubsub.get_message(timeout=1.0)) is None:
                pass
        if broadcast is not None:
            await pubsub.subscribe(broadcast)
    except TimeoutError:
        await pubsub.aclose()
        raise redis_errors.TimeoutError(f"no confirmation of the subscription to {sharded} in {POOL_TIMEOUT_S} s") from None
    except redis_errors.MovedError as exc:
        await pubsub.aclose()
        await redis.nodes_manager.initialize()  # type: ignore[attr-defined]  # a cluster's
        raise redis_errors.ConnectionError(f"the slot of {sharded} moved ({exc}); subscribe again") from exc
    except BaseException:
        await pubsub.aclose()
        raise
    return pubsub
