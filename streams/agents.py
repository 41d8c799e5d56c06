"""The built-in agent bodies, and how any body (built-in or a plugin's) is run.

A body gets the context and a batch of records (value, partition) in topic order. It must be
idempotent: Kafka delivers at least once.
"""

from __future__ import annotations

import logging

import pydantic
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from imflow.core import dead_letter, wire
from imflow.core.storage import archive_queue, fan_out
from imflow.core.agents import AgentContext, AgentSpec, Records, TimerSpec
from imflow.core.errors import ImflowError
from imflow.core.storage.fan_out import MODES, Mode
from imflow.core.models import Message, SendCommand
from imflow.core.plugin_calls import Hooks
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE
from imflow.core.send_path import handle_sends

from . import topics

log = logging.getLogger(__name__)


async def ingest(ctx: AgentContext, records: Records) -> None:
    """De-duplicate, assign mid and seq, fan out, queue for the archive, push and ACK."""
    batch = []
    for value, partition in records:
        try:
            # the gateways' decoder and limits (core/wire.py): a record they would refuse is refused here
            batch.append((SendCommand.model_validate(wire.decode(value)), partition))
        except (ImflowError, pydantic.ValidationError) as exc:
            await dead_letter.set_aside(ctx, "ingest", value, partition, f"malformed record: {exc}")

    async def after_persist(messages: list[Message]) -> None:
        await ctx.hooks.call("imflow_after_persist", messages=messages, context=ctx)

    async def choose_mode(conversation: str, members: int, sender: str) -> Mode | None:
        chosen = await ctx.hooks.first("imflow_fan_out_policy", conversation=conversation, members=members, sender=sender)
        if chosen is not None and chosen not in MODES:
            log.warning("imflow_fan_out_policy answered %r for %s; using the default", chosen, conversation)
            return None
        return chosen

    await handle_sends(ctx.redis, ctx.ids, ctx.settings, batch, after_persist, choose_mode)


AGENTS: tuple[AgentSpec, ...] = (AgentSpec("ingest", topics.INGEST, ingest),)

# Storage outages are waited out (the records are not committed meanwhile); a batch that
# fails otherwise is retried record by record, so one poison record cannot stop a partition
# or take its neighbours down with it.
_TRANSIENT = (*STORAGE_UNAVAILABLE, KafkaError, OSError)


async def run_body(spec: AgentSpec, ctx: AgentContext, records: Records) -> None:
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.1, max=5),
            before_sleep=lambda state: log.warning(
                "agent %s: storage unavailable (%s), retrying", spec.name, state.outcome.exception()
            ),
        ):
            with attempt:
                await spec.body(ctx, records)
    except Exception as exc:
        if len(records) > 1:
            for record in records:
                await run_body(spec, ctx, [record])
        else:
            log.exception("agent %s: a record of partition %d failed", spec.name, records[0][1])
            value, partition = records[0]
            try:
                await dead_letter.set_aside(ctx, spec.name, value, partition, f"{type(exc).__name__}: {exc}")
            except Exception:  # the broker is out as well: the log is all that is left
                log.exception("agent %s: could not set the record aside either", spec.name)


async def seal_archive(ctx: AgentContext) -> None:
    """The archive agent: seal what waits in every partition's queue (locks keep one writer each)."""
    s = ctx.settings
    partitions = range(s.topic_partitions)
    while await archive_queue.flush(ctx.redis, s.app_id, ctx.archive, partitions, s.archive_batch, s.conversation_log_limit):
        pass  # a partition gave a full batch: more may wait


async def flush_group_unread(ctx: AgentContext) -> None:
    """The group unread agent: bring members of read fan-out groups with new messages up to date."""
    await fan_out.flush_pending(ctx.redis)


TIMERS: tuple[TimerSpec, ...] = (
    TimerSpec("archive", lambda s: s.archive_flush_seconds, seal_archive),
    TimerSpec("group_unread", lambda s: s.group_unread_flush_seconds, flush_group_unread),
)


def all_agents(hooks: Hooks) -> tuple[list[AgentSpec], list[TimerSpec]]:
    """The built-in agents and timers, and those plugins add (``imflow_stream_agents``)."""
    added = hooks.collect_sync("imflow_stream_agents")
    agents = [*AGENTS, *(spec for spec in added if isinstance(spec, AgentSpec))]
    timers = [*TIMERS, *(spec for spec in added if isinstance(spec, TimerSpec))]
    return agents, timers


async def run_timer(spec: TimerSpec, ctx: AgentContext) -> None:
    """One tick; a failing tick is logged and the next one tries again."""
    try:
        await spec.body(ctx)
    except _TRANSIENT as exc:  # Redis away (an outage, or the worker shutting down): no traceback
        log.warning("timer %s: storage unavailable (%s); the next tick retries", spec.name, exc)
    except Exception:
        log.exception("timer %s failed; retrying at the next tick", spec.name)
