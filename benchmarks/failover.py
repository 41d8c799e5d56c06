"""Worker failover under load: how long messages wait when a worker dies or restarts.

    scripts/bench failover [--runs 3] [--rate 500] [--scenario kill|restart]

``kill``: two workers; one is killed with SIGKILL in the middle of a steady stream of sends, the
other must take its partitions over. ``restart``: one worker, killed with SIGKILL and started
again at once. Reported per run: the longest wait of a message for its ``sent`` (send → ACK;
what a user feels: the stall plus the backlog), how long until every conversation flows again,
the longest gap between consecutive ACKs, and that every message sent was ACKed exactly once,
seqs are gap-free and unread counts true. The suite runs one short run of each (tests/test_failover.py); the figures
in docs/benchmarks.md are medians of ``--runs``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass

from stack import Stack, arguments  # benchmarks/ is on the path: run as a script, or by tests/test_failover.py
from stack import unread_problems as stack_unread_problems

from imflow.testing import ImflowProcess


@dataclass
class FailoverRun:
    scenario: str
    rate: float  # sends per second offered
    sent: int
    acked: int
    duplicates: int  # a cmid ACKed with two different (mid, seq): must be 0
    longest_wait_s: float  # the longest send → ACK of any message sent after the fault
    longest_gap_s: float  # the longest time without any ACK, from the fault on
    resumed_after_s: float  # from the fault (restart: the new worker's start) until every conversation had an ACK again
    seq_problems: int  # conversations whose ACKed seqs are not exactly 1..n: must be 0
    unread_problems: int  # receivers whose unread counts (per conversation or total) differ from the truth: must be 0


async def run_once(kafka: str, redis_url: str, scenario: str, rate: float, before_s: float, after_s: float, env: dict[str, str] | None = None) -> FailoverRun:
    """One run of ``scenario`` ("kill" or "restart") at ``rate`` sends/s; raises on a lost message."""
    workers = 2 if scenario == "kill" else 1
    stack = Stack(kafka, redis_url, workers=workers, gateways=1, env=env)
    try:
        return await _drive(stack, scenario, rate, before_s, after_s)
    finally:
        stack.stop()


async def _drive(stack: Stack, scenario: str, rate: float, before_s: float, after_s: float) -> FailoverRun:
    run = uuid.uuid4().hex[:6]
    senders = [await stack.connect(f"s{i}-{run}") for i in range(10)]
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    answers: dict[str, tuple[int, int]] = {}
    duplicates = 0
    pending: set[asyncio.Future] = set()

    def on_ack(cmid: str, future: asyncio.Future) -> None:
        nonlocal duplicates
        if future.cancelled() or future.exception() is not None:
            return
        frame = future.result()
        answer = (frame["mid"], frame["seq"])
        if cmid in answers and answers[cmid] != answer:
            duplicates += 1
        answers[cmid] = answer
        acked_at.setdefault(cmid, loop.time())

    conversation_of: dict[str, tuple[str, str]] = {}  # cmid -> (sender, receiver)

    async def send(index: int) -> None:
        client = senders[index % len(senders)]
        cmid = f"m{index}"
        receiver = f"r{index % 64}-{run}"
        sent_at[cmid] = loop.time()
        conversation_of[cmid] = (client.user, receiver)
        future = await client.send_nowait({"to": receiver, "body": {"text": f"#{index}"}}, cmid)
        future.add_done_callback(lambda done: on_ack(cmid, done))
        pending.add(future)
        future.add_done_callback(pending.discard)

    # warm up until every partition answers (a message to each of 64 receivers spreads over all)
    for index in range(64):
        await send(index)
    await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 120)
    start = loop.time()
    index, fault_at, restarted_at = 64, None, None
    worker = stack.processes[0]
    while loop.time() - start < before_s + after_s:
        await send(index)
        index += 1
        if fault_at is None and loop.time() - start >= before_s:
            worker.proc.send_signal(signal.SIGKILL)
            worker.terminate()  # reaps it and closes its log
            fault_at = loop.time()
            stack.processes.remove(worker)  # killed on purpose: not to be stopped gracefully
            if scenario == "restart":
                folder = worker.log_path.parent
                stack.processes.insert(0, ImflowProcess(["worker"], _env_of(stack), folder / "worker-restarted.log", folder))
                restarted_at = loop.time()
        await asyncio.sleep(max(0.0, start + (index - 64) / rate - loop.time()))
    # everything sent must be ACKed (the Python client does not resend here: nothing was lost)
    await asyncio.wait(pending, timeout=120)
    errors = [error for client in senders for error in client.errors]
    for client in senders:
        await client.close()
    assert fault_at is not None
    after = [cmid for cmid, at in sent_at.items() if at >= fault_at]
    missing = [cmid for cmid in sent_at if cmid not in acked_at]
    if missing:
        logs = {process.log_path.name: process.output()[-3000:] for process in stack.processes}
        raise AssertionError(f"{len(missing)} messages got no 'sent' in 120 s, e.g. {missing[:5]}; errors: {errors[:5]}; logs: {logs}")
    acks = sorted(at for at in acked_at.values() if at >= fault_at)
    gaps = [b - a for a, b in zip([fault_at, *acks], acks, strict=False)]
    seq_problems, unread_problems = await _check_seqs_and_unread(stack, conversation_of, answers)
    reference = restarted_at if restarted_at is not None else fault_at
    # messages flow again once every conversation has had an ACK for a message sent after the fault
    first_ack: dict[tuple[str, str], float] = {}
    for cmid in after:
        if sent_at[cmid] >= reference:
            pair = conversation_of[cmid]
            first_ack[pair] = min(first_ack.get(pair, float("inf")), acked_at[cmid])
    return FailoverRun(
        scenario=scenario, rate=rate, sent=len(sent_at), acked=len(acked_at), duplicates=duplicates,
        longest_wait_s=round(max(acked_at[c] - sent_at[c] for c in after), 3),
        longest_gap_s=round(max(gaps), 3),
        resumed_after_s=round(max(first_ack.values()) - reference, 3),
        seq_problems=seq_problems, unread_problems=unread_problems,
    )


async def _check_seqs_and_unread(stack: Stack, conversation_of: dict[str, tuple[str, str]], answers: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Per conversation the ACKed seqs must be exactly 1..n, and each receiver's unread counts n
    per conversation and their sum as the total (nobody has read anything)."""
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for cmid, pair in conversation_of.items():
        seqs[pair].append(answers[cmid][1])
    seq_problems = sum(1 for found in seqs.values() if sorted(found) != list(range(1, len(found) + 1)))
    unread_problems = await stack_unread_problems(stack, {pair: len(found) for pair, found in seqs.items()})
    return seq_problems, unread_problems


def _env_of(stack: Stack) -> dict[str, str]:
    return {**stack.env, "IMFLOW_LOG_LEVEL": "info"}


async def main() -> None:
    parser = arguments(__doc__ or "", "artifacts/failover.json")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--scenario", choices=["kill", "restart", "both"], default="both")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of traffic before the fault")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of traffic after the fault")
    parser.add_argument("--static", action="store_true", help="restart: the worker has a static group instance id")
    args = parser.parse_args()
    scenarios = ["kill", "restart"] if args.scenario == "both" else [args.scenario]
    results = []
    for scenario in scenarios:
        # static membership needs one id per worker: only the one-worker restart can share the env
        env = {"IMFLOW_WORKER_INSTANCE_ID": "worker-0"} if args.static and scenario == "restart" else None
        for number in range(args.runs):
            run = await run_once(args.kafka, args.redis, scenario, args.rate, args.before, args.after, env)
            print(f"[failover] {scenario} run {number + 1}/{args.runs}: {json.dumps(asdict(run))}", flush=True)
            results.append(run)
    for scenario in scenarios:
        runs = [r for r in results if r.scenario == scenario]
        print(
            f"{scenario}: median longest wait {statistics.median(r.longest_wait_s for r in runs):.2f} s, "
            f"longest ACK gap {statistics.median(r.longest_gap_s for r in runs):.2f} s, "
            f"every conversation flowing again after {statistics.median(r.resumed_after_s for r in runs):.2f} s (median of {len(runs)})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    asyncio.run(main())
