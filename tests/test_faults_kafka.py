"""Kafka broker loss and restarts under load (issue #13, item 3), on the real stack.

On the 3-broker cluster of ``scripts/services cluster`` (replication factor 3,
min.insync.replicas 2) at 150 sends/s: ``kill -9`` of the broker leading most ingest partitions,
its restart, ``kill -9`` of another, its restart (the rolling restart of all three runs under
``scripts/bench broker-faults``, to keep the suite short). On a private
single broker (``scripts/services solo``; the shared broker of the other tests is never
touched): stopped for 20 s and started again. Each run checks that every message was ACKed
with one (mid, seq), seqs are 1..n per conversation, every receiver got each message pushed in
seq order (after dropping repeated mids), unread counts are true and no imflow process exited.
Senders resend un-ACKed messages with the same cmid, as clients do. The driver is the
broker-faults benchmark's (benchmarks/broker_faults.py; medians in docs/benchmarks.md). Both
brokers are started if they are not running, and left running like ``scripts/services up``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import broker_faults  # noqa: E402

# each scenario runs about a minute and a half; a broker start on a loaded machine can be slow
pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

# sends per second: under load, with room to drain the backlog of a 10 s stall (plus the
# clients' resends) on the shared 2-core machine; scripts/bench broker-faults defaults to 300
RATE = 150.0


def report(run: broker_faults.BrokerFaultRun) -> None:
    print(f"\n{run.scenario}: sent {run.sent}, ACKed {run.acked}, unavailable {run.unavailable}, "
          f"silent attempts {run.silent_attempts}, longest answer {run.longest_answer_s} s, "
          f"repeated pushes {run.repeated_pushes}\n{broker_faults.summary(run)}")
    for note in run.notes:
        print(f"  note: {note}")


async def test_brokers_killed_and_restarted_lose_and_repeat_nothing(redis_url: str) -> None:
    # the rolling restart of all three brokers runs under `scripts/bench broker-faults` (a minute more)
    run = await broker_faults.run_cluster(redis_url, RATE, rolling=False)
    report(run)
    assert run.problems() == [], run
    # imflow's topics, Faust's own and the consumer offsets all have three replicas
    assert len(run.replicas) >= 4 and set(run.replicas.values()) == {3}, run.replicas
    assert [fault.fault for fault in run.faults] == [
        "kill -9 the ingest leaders' broker", "restart it", "kill -9 another broker", "restart it",
    ]
    # every step ended with the flow recovered (the driver waits for it): the gaps are measured,
    # and a pause longer than a minute would be an outage, not a failover
    assert all(fault.longest_ack_gap_s < 60 for fault in run.faults), broker_faults.summary(run)


async def test_a_stopped_broker_gets_unavailable_answers_and_the_flow_resumes_by_itself(redis_url: str) -> None:
    run = await broker_faults.run_solo(redis_url, RATE)
    report(run)
    assert run.problems() == [], run
    out, back = run.faults
    # gateways answered every send while the broker was away: 'unavailable', never silence
    assert out.unavailable > 0, run
    assert run.silent_attempts == 0, f"sends left unanswered for {broker_faults.SILENCE_S} s: {run.silent_attempts}"
    # /readyz said which dependency was out, on every gateway, and was ready again afterwards
    during = [line for line in run.readyz if not line.startswith("after")]
    assert all("no answer" not in line for line in during), during
    for gateway in ("gateway0", "gateway1"):
        said = [line for line in during if f"{gateway}:" in line]
        assert any("503 {" in line and '"kafka": false' in line and '"redis": true' in line for line in said), said
    assert all(" 200 " in line for line in run.readyz if line.startswith("after")), run.readyz
    # and the flow resumed by itself soon after the broker was back
    assert back.longest_ack_gap_s < 30, broker_faults.summary(run)
