"""Worker failover in seconds, not Faust's default minute (issue #13, item 2), on the real stack.

Two workers at 500 sends/s, one killed with SIGKILL: the other takes its partitions over and
every conversation flows again within 10 s. One worker killed and started again at once:
messages flow within 15 s of its start (with a static instance id, at once). Each run checks
that every message was ACKed once, seqs are 1..n per conversation and unread counts are true.
The driver is the failover benchmark's (benchmarks/failover.py: medians in docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import failover  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def assert_exact(run: failover.FailoverRun) -> None:
    assert run.acked == run.sent and run.duplicates == 0, run
    assert run.seq_problems == 0 and run.unread_problems == 0, run


async def test_a_killed_worker_s_partitions_flow_again_within_10_s(kafka_url, redis_url) -> None:
    run = await failover.run_once(kafka_url, redis_url, "kill", rate=500, before_s=4, after_s=14)
    print(run)
    assert_exact(run)
    # the bound: flowing again within 10 s (detection takes the 6 s session timeout)
    assert run.resumed_after_s <= 10, run


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static-member"])
async def test_a_restarted_worker_flows_within_15_s_of_its_start(kafka_url, redis_url, static) -> None:
    env = {"IMFLOW_WORKER_INSTANCE_ID": "worker-0"} if static else None
    run = await failover.run_once(kafka_url, redis_url, "restart", rate=500, before_s=4, after_s=14, env=env)
    print(run)
    assert_exact(run)
    assert run.resumed_after_s <= (10 if static else 15), run
