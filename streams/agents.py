"""Which service each built-in agent and timer calls, and how any body (built-in or a plugin's) is run.

Transport only: a body is one call into a core/ service; it gets the context and a batch of
records (value, partition) in topic order, and must be idempotent (Kafka delivers at least once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from imflow.core import archiving, dead_letter, sending, unread
from imflow.core.agents import AgentContext, AgentSpec, Records, TimerSpec
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE

from . import topics

if TYPE_CHECKING:
    from imflow.core.plugin_calls import Hooks

log = logging.getLogger(__name__)


AGENTS: tuple[AgentSpec, ...] = (AgentSpec("ingest", topics.INGEST, sending.ingest),)

# Storage outages are waited out (the records are not committed meanwhile); a batch that
# fails otherwise is retried record by record, so one poison record cannot stop a partition
# or take its neighbours down with it.
_TRANSIENT = (*STORAGE_UNAVAILABLE, KafkaError, OSError)


async def run_body(spec: AgentSpec, ctx: AgentContext, records: Records) -> None:
    """Run ``spec``'s body on a batch: storage outages are retried until they pass, other
    failures retried record by record and the failing record set aside (dead letters)."""
    try:
        # the first try outside tenacity: its retry state costs ~35 µs a batch, and batches are
        # small at low load (a batch of one is most of them); a failure goes the retrying way
        await spec.body(ctx, records)
        return
    except _TRANSIENT as exc:
        _outage(spec, exc)
    except Exception as exc:
        await _one_by_one(spec, ctx, records, exc)
        return
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.1, max=5),
            before_sleep=lambda state: _outage(spec, state.outcome.exception() if state.outcome else None),
        ):
            with attempt:
                await spec.body(ctx, records)
    except Exception as exc:
        await _one_by_one(spec, ctx, records, exc)


def _outage(spec: AgentSpec, exc: BaseException | None) -> None:
    log.warning("agent %s: storage unavailable (%s), retrying", spec.name, exc)


async def _one_by_one(spec: AgentSpec, ctx: AgentContext, records: Records, exc: Exception) -> None:
    """A batch failed with ``exc`` (not an outage): retry its records one at a time; a single
    record that fails is set aside on the dead-letter topic."""
    if len(records) > 1:
        for record in records:
            await run_body(spec, ctx, [record])
        return
    log.error("agent %s: a record of partition %d failed", spec.name, records[0][1], exc_info=exc)
    value, partition = records[0]
    try:
        await dead_letter.set_aside(ctx, spec.name, value, partition, f"{type(exc).__name__}: {exc}")
    except Exception:  # the broker is out as well: the log is all that is left
        log.exception("agent %s: could not set the record aside either", spec.name)


TIMERS: tuple[TimerSpec, ...] = (
    TimerSpec("archive", lambda s: s.archive_flush_seconds, archiving.seal),
    TimerSpec("archive_maintenance", lambda s: s.archive_maintenance_seconds, archiving.maintain),
    TimerSpec("archive_merge", lambda s: s.archive_merge_seconds, archiving.merge_recent),  # 0: no such timer
    TimerSpec("group_unread", lambda s: s.group_unread_flush_seconds, unread.flush_read_fan_out),
)


def all_agents(hooks: Hooks) -> tuple[list[AgentSpec], list[TimerSpec]]:
    """The built-in agents and timers, and those plugins add (``imflow_stream_agents``)."""
    added = hooks.call.stream_agents()
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
