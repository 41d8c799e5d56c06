"""The Faust app: one agent per AgentSpec, each the thin shell around its body in agents.py."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import faust

from imflow.core.agents import AgentContext, AgentSpec, TimerSpec, topic_name
from imflow.core.plugin_calls import Hooks
from imflow.core.storage.redis_client import connect

from .agents import all_agents, run_body, run_timer
from .kafka import KafkaProducer, ensure_topics
from .topics import all_topic_names

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from imflow.core.settings import Settings

log = logging.getLogger(__name__)


class WorkerResources:
    """Redis client and producer of a worker, made on its event loop at first use."""

    def __init__(self, settings: Settings, hooks: Hooks, agents: list[AgentSpec], redis: Redis | None = None) -> None:
        self.settings = settings
        self.hooks = hooks
        self.agents = agents
        self._shared_redis = redis  # given by the embedding process, which closes it
        self._context: AgentContext | None = None
        self._producer: KafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def context(self) -> AgentContext:
        if self._context is None:
            async with self._lock:
                if self._context is None:
                    s = self.settings
                    if self._shared_redis is None:  # an embedding process configured its plugins already
                        await self.hooks.call.configure(settings=s)
                    topics = all_topic_names(s.app_id, [spec.topic for spec in self.agents])
                    await ensure_topics(s.kafka_bootstrap, topics, s.topic_partitions, s.topic_replication_factor)
                    self._producer = KafkaProducer(s.kafka_bootstrap, f"{s.node_name}-worker")
                    await self._producer.start()
                    redis = self._shared_redis or connect(self.settings.redis_url)
                    s, hooks, producer = self.settings, self.hooks, self._producer
                    self._context = AgentContext(settings=s, redis=redis, node=s.node_name, hooks=hooks, producer=producer)
                    if self._shared_redis is None:  # an embedding process runs its plugins' startup itself
                        await hooks.call.startup(services=self._context, role="worker")
        return self._context

    async def close(self) -> None:
        if self._context is not None and self._shared_redis is None:
            await self.hooks.call.shutdown(services=self._context, role="worker")
            await self._context.redis.aclose()
        self._context = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def create_app(settings: Settings, redis: Redis | None = None, hooks: Hooks | None = None) -> faust.App:
    """A Faust app for these settings; nothing is made at import time.

    ``redis`` lets a process that embeds the app share its client (and its fakeredis);
    ``hooks`` are the plugins (built by the caller: ``imflow worker`` or ``imflow serve``).
    """
    hooks = hooks if hooks is not None else Hooks()
    if not settings.kafka_url:
        raise ValueError("a Faust worker needs Kafka: set IMFLOW_KAFKA_URL or pass --kafka")
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # failover in seconds, not Faust's minute: a SIGKILLed worker's partitions move after the
        # session timeout; a restarted static member takes its own back at once (docs/architecture.md)
        broker_session_timeout=settings.worker_session_timeout_seconds,
        broker_heartbeat_interval=settings.worker_heartbeat_seconds,
        broker_rebalance_timeout=settings.worker_rebalance_timeout_seconds,
        consumer_group_instance_id=settings.worker_instance_id,
    )
    agents, timers = all_agents(hooks)
    resources = WorkerResources(settings, hooks, agents, redis)
    for spec in agents:
        _add_agent(app, spec, resources)
    for timer in timers:
        if timer.runs(settings):
            _add_timer(app, timer, resources)

    @app.on_before_shutdown.connect
    async def _close(app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await resources.close()

    return app


def _add_agent(app: faust.App, spec: AgentSpec, resources: WorkerResources) -> None:
    topic = app.topic(
        topic_name(app.conf.id, spec.topic),
        key_type=bytes,
        value_type=bytes,
        partitions=app.conf.topic_partitions,
        internal=True,  # Faust declares it with these partitions at start (else it waits for a producer)
    )

    settings = resources.settings

    async def agent(stream: faust.StreamT) -> None:
        # take_events acks a batch only after the body has handled it: still at least once
        # (it is on faust.Stream; the StreamT protocol lacks it)
        batches = stream.take_events(settings.agent_batch_max, within=settings.agent_batch_wait_ms / 1000)  # type: ignore[attr-defined]
        async for events in batches:
            records = [(event.value, event.message.partition) for event in events]
            await run_body(spec, await resources.context(), records)

    app.agent(topic, name=f"imflow.{spec.name}")(agent)


def _add_timer(app: faust.App, spec: TimerSpec, resources: WorkerResources) -> None:
    async def tick() -> None:
        await run_timer(spec, await resources.context())

    tick.__name__ = tick.__qualname__ = f"imflow_{spec.name}_timer"
    app.timer(spec.interval(resources.settings), name=f"imflow.{spec.name}")(tick)
