"""One imflow process: which transport, which Redis, whether the agents run here.

This is the composition root. It is the only place that knows both the gateway and the
streams; each of those knows only core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING

from imflow.core import archiving
from imflow.core.agents import AgentContext, AgentSpec, TimerSpec, topic_name
from imflow.core.services import Services
from imflow.core.storage import lake
from imflow.core.storage.archive import ArchiveReader
from imflow.core.storage.redis_client import connect
from imflow.plugin_manager import make_hooks
from imflow.streams.agents import all_agents, run_body, run_timer
from imflow.streams.kafka import BroadcastConsumer, KafkaProducer, ensure_topics
from imflow.streams.local import LocalBus
from imflow.streams.topics import INGEST, all_topic_names

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import faust
    from redis.asyncio import Redis

    from imflow.core.agents import Producer
    from imflow.core.models import SendCommand
    from imflow.core.plugin_calls import Hooks
    from imflow.core.settings import Settings

log = logging.getLogger(__name__)


async def _local_consumer(spec: AgentSpec, context: AgentContext, values: list[bytes], partition: int) -> None:
    await run_body(spec, context, [(value, partition) for value in values])


class Node:
    """Gateway backend of ``imflow serve`` (agents in process) and ``imflow gateway`` (no agents)."""

    def __init__(self, settings: Settings, *, run_agents: bool, hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.run_agents = run_agents
        self.hooks = hooks if hooks is not None else make_hooks(settings)
        self.agents, self.timers = all_agents(self.hooks)
        self.running_timers = [timer for timer in self.timers if timer.runs(settings)]  # an interval of 0: off
        self.broadcast_topics = sorted({stream.topic for stream in self.hooks.call.broadcast_streams()})
        self._broadcast_consumers: list[BroadcastConsumer] = []
        self.node_name = settings.node_name
        self.role = "serve" if run_agents else "gateway"  # for the plugins' startup and shutdown hooks
        self.services: Services  # what the gateway's services get (built once Redis is connected)
        self.redis: Redis
        self.producer: Producer
        self.lake_config = lake.LakeConfig.from_settings(settings)
        # the process's one lake connection (opened on first use): history pages and, with the
        # agents here, the archive's writes and maintenance
        self.archive = ArchiveReader(self.lake_config)
        self.bus: LocalBus | None = None
        self._kafka: KafkaProducer | None = None
        self._faust: faust.App | None = None
        self._context: AgentContext | None = None
        self._timers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        await self.hooks.call.configure(settings=s)
        self.redis = connect(s.redis_url)
        try:  # open the lake now, not on the first history page; /readyz tells if it is away
            await asyncio.to_thread(self.archive.cursor)
        except Exception as exc:
            log.warning("the archive is not reachable yet (%s); history older than Redis's log waits for it", exc)
        self.services = Services(settings=s, redis=self.redis, node=s.node_name, archive=self.archive, hooks=self.hooks)
        await self.hooks.call.startup(services=self.services, role=self.role)
        if s.embedded_transport:
            self.bus = self.producer = LocalBus(s.topic_partitions, batch_max=s.agent_batch_max)
            if self.run_agents:
                self._context = AgentContext(
                    settings=s, redis=self.redis, node=s.node_name, hooks=self.hooks, producer=self.bus, archive=self.archive
                )
                for spec in self.agents:
                    self.bus.subscribe(topic_name(s.app_id, spec.topic), partial(_local_consumer, spec, self._context))
                self._timers = [asyncio.create_task(self._tick(timer, self._context)) for timer in self.running_timers]
            await self.bus.start()
        else:
            topics = all_topic_names(s.app_id, [spec.topic for spec in self.agents] + self.broadcast_topics)
            await ensure_topics(s.kafka_bootstrap, topics, s.topic_partitions, s.topic_replication_factor)
            self._kafka = self.producer = KafkaProducer(s.kafka_bootstrap, f"{s.node_name}-gateway")
            await self._kafka.start()
            if self.run_agents:
                from imflow.streams.app import create_app

                self._faust = create_app(s, redis=self.redis, hooks=self.hooks)
                await self._faust.start()
        log.info(
            "node %s started: transport=%s redis=%s agents=%s",
            s.node_name,
            "in-process" if s.embedded_transport else s.kafka_url,
            "fakeredis" if s.embedded_redis else s.redis_url,
            "here" if self.run_agents else "in workers",
        )

    async def _tick(self, timer: TimerSpec, context: AgentContext) -> None:
        # ends when _stopping is set (not only by cancellation: a library that swallows a
        # CancelledError in a tick must not make shutdown wait forever)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timer.interval(self.settings))
            if not self._stopping.is_set():
                await run_timer(timer, context)

    async def stop(self) -> None:
        log.info("node %s stopping", self.settings.node_name)
        self._stopping.set()
        if self._timers:
            _, running = await asyncio.wait(self._timers, timeout=5)
            for task in running:
                task.cancel()
        for consumer in self._broadcast_consumers:
            await consumer.stop()
        if self._faust is not None:
            await self._faust.stop()
        if self.bus is not None:
            try:  # finish what was queued, within reason
                await asyncio.wait_for(self.bus.join(), 10)
            except TimeoutError:
                log.warning("stopping with records still queued in the in-process transport")
            await self.bus.stop()
        if self._context is not None:
            await archiving.seal(self._context)  # the embedded queue lives in memory: seal it before exit
        if hasattr(self, "services"):  # started far enough for the plugins to have started
            await self.hooks.call.shutdown(services=self.services, role=self.role)
        if self._kafka is not None:
            await self._kafka.stop()
        await self.redis.aclose()
        self.archive.close()

    async def produce(self, topic: str, key: bytes, value: bytes) -> None:
        """Put a record on an agent's topic (its short name); returns once it is durable."""
        await self.producer.send(topic_name(self.settings.app_id, topic), key, value)

    broadcast = produce  # a broadcast stream is a topic like any other; only its readers differ

    async def subscribe_broadcast(self, topic: str, handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
        """Feed this gateway every record put on a broadcast stream from now on."""
        name = topic_name(self.settings.app_id, topic)
        if self.bus is not None:  # in process: every subscriber of a topic gets every record
            async def consume(values: list[bytes], partition: int) -> None:
                await handle(values)

            self.bus.subscribe(name, consume)
            return
        consumer = BroadcastConsumer(self.settings.kafka_bootstrap, name, self.settings.topic_partitions, handle)
        await consumer.start()
        self._broadcast_consumers.append(consumer)

    async def submit(self, command: SendCommand) -> asyncio.Future:
        """Queue a client's send on the ingest topic, in the order of the calls.

        Returns at once with a future that resolves when the record is durable there, so a
        connection can pipeline its sends instead of waiting a broker round trip for each.
        """
        return await self.producer.enqueue(
            topic_name(self.settings.app_id, INGEST), command.conversation.encode(), command.model_dump_json().encode()
        )

    async def readiness(self) -> dict[str, bool]:
        checks = {"redis": await self._redis_answers()}
        if self.bus is not None:
            checks["transport"] = await self.bus.ready()
        elif self._kafka is not None:
            checks["kafka"] = await self._kafka.ready()
        # the archive's catalog and data files (history older than Redis's log comes from there)
        checks.update(await asyncio.to_thread(lake.check, self.lake_config))
        return checks

    async def _redis_answers(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False
