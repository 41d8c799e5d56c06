"""Agent bodies: one per topic, the same code under Faust and under the in-process transport.

A body gets the context, one record's value and its partition. It must be idempotent: Kafka
delivers at least once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pydantic
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from imflow.core import keys
from imflow.core.ingest import accept
from imflow.core.models import SendCommand

from . import topics
from .context import AgentContext

log = logging.getLogger(__name__)

AgentBody = Callable[[AgentContext, bytes, int], Awaitable[None]]


@dataclass(frozen=True)
class AgentSpec:
    name: str
    topic: str  # short name; the app id is prefixed at run time
    body: AgentBody


async def ingest(ctx: AgentContext, value: bytes, partition: int) -> None:
    """De-duplicate, assign mid and seq, store, and tell the sender's gateway."""
    command = SendCommand.model_validate_json(value)
    accepted = await accept(ctx.redis, ctx.ids(partition), command, ctx.settings.dedup_ttl_seconds)
    if command.gateway:
        # a lost ACK is harmless: the client resends and de-duplication answers the same
        await ctx.redis.publish(keys.gateway_channel(command.gateway), accepted.model_dump_json())


AGENTS: tuple[AgentSpec, ...] = (AgentSpec("ingest", topics.INGEST, ingest),)

# Storage outages are waited out (the record is not committed meanwhile); anything else is
# a bad record, logged and skipped so one poison record cannot stop a partition.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


async def run_body(spec: AgentSpec, ctx: AgentContext, value: bytes, partition: int) -> None:
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.1, max=5),
            before_sleep=lambda state: log.warning(
                "agent %s: storage unavailable (%s), retrying", spec.name, state.outcome.exception()
            ),
        ):
            with attempt:
                await spec.body(ctx, value, partition)
    except pydantic.ValidationError as exc:
        log.error("agent %s: skipped a malformed record on partition %d: %s", spec.name, partition, exc)
    except Exception:
        log.exception("agent %s: skipped a record on partition %d after an error", spec.name, partition)
