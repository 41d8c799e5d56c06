"""Message lifecycle (issue #18) on the real stack: what the issue's plugins cost the send path,
and how long a recall (and an edit) takes to reach every member of a 10,000-member group.

    scripts/bench lifecycle [--part send|recall|both] [--runs 3] [--profile DIR [--profile-native]] [--gc A,B,C]
        send:   [--rate 1000] [--pairs 50] [--offline-share 0.2] [--seconds 8] [--warmup 2]
                [--group-rate 20] [--group-size 20]
        recall: [--members 10000] [--no-edit] [--profile-runs 5]

Part ``send``: one-to-one at --rate messages a second in total (``imflow-loadgen chat``,
benchmarks/loadgen, as ``scripts/bench one-to-one``), send → ``sent`` and send → the
receiver's push, on two stacks started in turn in the same run, --runs times each, the order
swapped every run: **without** (``IMFLOW_DISABLED_PLUGINS=recall_edit,typing,attachments,webhook``)
and **with** the issue's plugins, the webhook then pointed at a sink on 127.0.0.1 (a thread of
this process) with every event on. In both, the receivers of --offline-share of the pairs sign
in once and leave before the load (``chat --offline``), so a share of the sends takes the offline
path (``imflow_offline_push``: the webhook's ``offline_push`` events); and beside the load this
process's owner sends --group-rate messages a second into a --group-size member group (write
fan-out), half its members offline, each message mentioning two of them (send → ``sent`` timed
here). Beside the latencies, the gateway's and the workers' CPU milliseconds a message over
the whole run (warm-up and drain included: a stack that falls behind does its work later, not
less of it, so this compares the two even on a machine too busy to keep up). Medians over the
runs and the ratio with/without; the sink's events by type. --profile DIR: py-spy's stacks of
the gateway and the workers over the last run of each (DIR/send-with, DIR/send-without).

Part ``recall``: one stack with every plugin (and the webhook and sink as above); a group made
with --members members (``create_group``, then ``add_members`` in chunks of 1,000, each timed),
every member online as a real WebSocket connection (``imflow-loadgen watch``; the owner's too,
as a second device). Per run: the owner sends a message (send → every member has the ``msg``
push), recalls it (the request → every member has the ``recalled`` push), sends another and edits
it (→ ``edited``). Each figure is over the members (p50, p99, max of their arrival times after
the request, on one clock), with the CPU seconds the gateway, the workers and the Redis server
used until the last arrival (Redis's: the whole server's, its other users' too), medians over
the runs. --profile DIR records the gateway and the workers with py-spy (``.venv/bin/py-spy``,
else the one on PATH; collapsed stacks, DIR/recall) over --profile-runs extra runs
(--profile-native: with native frames, e.g. the garbage collector's). --gc A,B,C sets the
garbage collector's thresholds in every imflow process ("0": off), to measure its share.

Every stack keeps its archive in the embedded lake and the attachments plugin its local store
(the shared catalog and object store that ``scripts/bench`` exports are left out: neither is
measured here, and on a busy machine the gateway's readiness check of the shared catalog
outlasts the 2 s a stack waits for an answer).

Results: tables on stdout, everything in --json (artifacts/bench-lifecycle.json), with the load
average and the commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis as redis_sync
from loadgen import driver
from stack import SECRET, Stack, arguments, percentile

from imflow.client import Client, ClientError
from imflow.core.storage import lake

ISSUE_PLUGINS = "recall_edit,typing,attachments,webhook"
WEBHOOK_EVENTS = "offline_push,message_sent,group_changed,message_amended"
ROOT = Path(__file__).resolve().parents[1]


# -- the webhook's receiver


class Sink:
    """An HTTP server on 127.0.0.1 in a thread that answers 200 to every POST and counts the
    webhook's events by type (``{"events": [{"id", "type", …}, …]}``) and distinct ids."""

    def __init__(self) -> None:
        counts: Counter[str] = Counter()
        ids: set[str] = set()
        lock = threading.Lock()
        self.counts, self.ids, self.lock, self.posts = counts, ids, lock, 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    events = json.loads(body).get("events", [])
                except ValueError:
                    events = []
                with lock:
                    sink.posts += 1
                    for event in events:
                        counts[event.get("type", "?")] += 1
                        ids.add(event.get("id", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> dict[str, Any]:
        """What arrived since the last take: events by type, distinct ids, POSTs; then reset."""
        with self.lock:
            out = {"events": dict(self.counts), "distinct_ids": len(self.ids), "posts": self.posts}
            self.counts.clear()
            self.ids.clear()
            self.posts = 0
        return out


def stack_env(variant: str, sink: Sink | None) -> dict[str, str]:
    """The environment of a stack ``without`` the issue's plugins or ``with`` them (and the webhook on)."""
    if variant == "without":
        return {"IMFLOW_DISABLED_PLUGINS": ISSUE_PLUGINS}
    assert sink is not None
    return {"IMFLOW_WEBHOOK_URL": sink.url, "IMFLOW_WEBHOOK_EVENTS": WEBHOOK_EVENTS}


def gc_env(thresholds: str | None) -> dict[str, str]:
    """For --gc: a folder on PYTHONPATH whose sitecustomize.py sets the imflow processes'
    garbage collector thresholds at start ("0": the collector off), so its share of the
    gateway's time can be measured; {} without it."""
    if not thresholds:
        return {}
    folder = Path(tempfile.mkdtemp(prefix="imflow-gc-"))
    values = [int(v) for v in thresholds.split(",")]
    line = "gc.disable()" if values == [0] else f"gc.set_threshold({', '.join(map(str, values))})"
    (folder / "sitecustomize.py").write_text(f"import gc\n{line}\n")
    return {"PYTHONPATH": str(folder)}


def start_stack(args, env: dict[str, str], attempts: int = 5) -> Stack:
    """A stack of one gateway and --workers workers; on a busy machine a gateway may miss its
    readiness deadline: tried again, up to ``attempts`` times."""
    env = {**env, **gc_env(args.gc)}
    for attempt in range(1, attempts + 1):
        try:
            return Stack(args.kafka, args.redis, workers=args.workers, gateways=1, env=env)
        except AssertionError as exc:  # imflow.testing's "did not answer in …"
            if attempt == attempts:
                raise
            print(f"the stack did not start ({str(exc).splitlines()[0]}); again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def stop(stack: Stack) -> None:
    """``Stack.stop``, except that a process slow to stop on a busy machine (killed after 30 s)
    or one logging a traceback on its way out costs no figures and stops the others all the same."""
    for process in reversed(stack.processes):  # gateways first, then workers
        try:
            process.stop_gracefully()
        except AssertionError as exc:
            print(f"stopping {process.proc.args}: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)
    if stack.lake is not None:
        lake.drop_catalog_schema(stack.lake)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


# -- part 1: the send path with and without the plugins


async def group_side_load(stack: Stack, rate: float, size: int, stop: asyncio.Event) -> dict[str, Any]:
    """The owner of a ``size``-member group sends ``rate`` messages a second into it (open loop)
    until ``stop``, each mentioning two offline members (half the members are offline); the
    rest are connected. Send → ``sent`` in ms. Mentions are left out if the server refuses the
    first message's."""
    tag = uuid.uuid4().hex[:6]
    names = [f"g{i:03d}-{tag}" for i in range(size)]
    owner = await stack.connect(names[0])
    group = await owner.request({"op": "create_group", "name": "lifecycle", "members": names[1:]})
    online = [await stack.connect(name) for name in names[1 : size // 2]]
    offline = names[size // 2 :]
    conversation, acks, pending = group["conversation"], [], []
    mentions, refused = True, None

    def body(i: int) -> dict[str, Any]:
        text: dict[str, Any] = {"text": f"news {i}"}
        if mentions:
            text["mentions"] = [offline[i % len(offline)], offline[(i + 1) % len(offline)]]
        return text

    try:
        try:  # the first one closed loop: does the server take mentions?
            await owner.send({"conversation": conversation, "body": body(0)}, timeout=30)
        except ClientError as exc:
            mentions, refused = False, exc.frame.get("code")
        start, i = time.perf_counter(), 1
        while not stop.is_set():
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            t0 = time.perf_counter()
            future = await owner.send_nowait({"conversation": conversation, "body": body(i)})
            future.add_done_callback(lambda f, t0=t0: f.cancelled() or f.exception() or acks.append(
                (time.perf_counter() - t0) * 1000))
            pending.append(future)
            i += 1
        await asyncio.wait(pending, timeout=30)
    finally:
        for client in [owner, *online]:
            await client.close()
    return {"sent": len(pending) + 1, "stored": len(acks), "errors": [e.get("code") for e in owner.errors],
            "mentions": mentions, "mentions_refused": refused, "offline_members": len(offline),
            "ack_p50_ms": percentile(acks, 0.5), "ack_p99_ms": percentile(acks, 0.99)}


async def send_cell(binary: Path, stack: Stack, folder: Path, args, profile: Path | None) -> dict[str, Any]:
    """One chat run at --rate on ``stack`` with the group side load beside it (``profile``: a
    folder for py-spy's stacks of the gateway and the workers over it)."""
    tag = uuid.uuid4().hex[:6]
    users = [name for i in range(args.pairs) for name in (f"s{i}-{tag}", f"r{i}-{tag}")]
    token_file = driver.write_tokens(folder / f"tokens-{tag}", users, SECRET)
    offline = round(args.pairs * args.offline_share)
    options = ["--target", "imflow", "--url", stack.url, "--tokens", str(token_file), "--pairs", str(args.pairs),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--rate", str(args.rate),
               "--offline", str(offline)]
    samplers = [driver.CpuSampler(process.proc.pid) for process in stack.processes]
    for sampler in samplers:
        sampler.__enter__()
    spies = start_profiles(profile, stack, 600, args.profile_native) if profile else []
    cpu_before = [driver.cpu_seconds(process.proc.pid) for process in stack.processes]
    stop = asyncio.Event()
    side = asyncio.create_task(group_side_load(stack, args.group_rate, args.group_size, stop)) if args.group_rate else None
    try:
        result = await asyncio.to_thread(driver.run, binary, "chat", options)
    finally:
        stop.set()
        group = await side if side else None
        for sampler in samplers:
            sampler.__exit__()
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            await asyncio.to_thread(spy.wait, 60)
    # CPU per message over the whole run, warm-up and drain included: a stack that falls behind
    # does its work later, not less of it, so this compares with and without even when both lag
    cpu = [driver.cpu_seconds(process.proc.pid) - before for process, before in zip(stack.processes, cpu_before, strict=True)]
    messages = result["posts_sent_total"] + (group["sent"] if group else 0)
    span = result["cpu"]["from_unix_s"], result["cpu"]["to_unix_s"]
    cores = [sampler.cores(*span) for sampler in samplers]
    return {
        "offered_per_s": result["posts_sent"] / args.seconds, "stored": result["posts_acked"],
        "offline_acked": result["offline_acked"], "sent_total": result["posts_sent_total"],
        "delivered": result["deliveries"] / max(1, result["expected_deliveries"]), "lost": result["lost"],
        "failed": result["posts_failed"], "errors": result["errors"],
        "ack_p50_ms": result["ack_ms"]["p50"], "ack_p99_ms": result["ack_ms"]["p99"],
        "push_p50_ms": result["latency_ms"]["p50"], "push_p99_ms": result["latency_ms"]["p99"],
        "gateway_cores": cores[-1], "worker_cores": sum(c for c in cores[:-1] if c is not None),
        "generator_cores": result["cpu"]["cores_used"], "group": group, "messages": messages,
        "gateway_cpu_ms_per_msg": 1000 * cpu[-1] / messages, "worker_cpu_ms_per_msg": 1000 * sum(cpu[:-1]) / messages,
    }


async def send_part(args, sink: Sink) -> dict[str, Any]:
    binary = driver.build()
    folder = Path(tempfile.mkdtemp(prefix="imflow-lifecycle-"))
    cells: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    load = {"before": load_average()}
    for run in range(1, args.runs + 1):
        for variant in (("without", "with") if run % 2 else ("with", "without")):
            print(f"run {run}/{args.runs}: {variant} the issue's plugins, {args.rate}/s ...", file=sys.stderr, flush=True)
            sink.take()
            stack = start_stack(args, stack_env(variant, sink))
            try:
                profile = args.profile / f"send-{variant}" if args.profile and run == args.runs else None
                cell = await send_cell(binary, stack, folder, args, profile)
            finally:
                stop(stack)  # the webhook's sender drains its queue on shutdown
            cell["sink"] = sink.take()
            cell["load_average"] = load_average()
            cells[variant].append(cell)
    load["after"] = load_average()
    keys = ("ack_p50_ms", "ack_p99_ms", "push_p50_ms", "push_p99_ms", "gateway_cores", "worker_cores", "delivered", "lost",
            "gateway_cpu_ms_per_msg", "worker_cpu_ms_per_msg")
    medians = {variant: {key: statistics.median(c[key] for c in runs if c[key] is not None) for key in keys}
               for variant, runs in cells.items()}
    for variant, runs in cells.items():
        groups = [c["group"] for c in runs if c["group"]]
        if groups:
            medians[variant]["group_ack_p50_ms"] = statistics.median(g["ack_p50_ms"] for g in groups)
            medians[variant]["group_ack_p99_ms"] = statistics.median(g["ack_p99_ms"] for g in groups)
    ratio = {key: round(medians["with"][key] / medians["without"][key], 2)
             for key in medians["with"] if key.endswith(("_ms", "_per_msg")) and medians["without"].get(key)}
    return {"rate": args.rate, "pairs": args.pairs, "offline_pairs": round(args.pairs * args.offline_share),
            "seconds": args.seconds, "runs": args.runs, "medians": medians, "ratio_with_over_without": ratio,
            "load_average": load, "cells": cells}


def send_table(part: dict[str, Any]) -> str:
    m, ratio = part["medians"], part["ratio_with_over_without"]
    rows = [(f"send path at {part['rate']:,}/s one-to-one, {part['pairs']} pairs ({part['offline_pairs']} receivers "
             f"offline), medians of {part['runs']} runs per stack"),
            ("| | sent p50 / p99 ms | push p50 / p99 ms | group sent p50 / p99 ms | CPU ms a message: gateway / worker "
             "| lost |"),
            "|---|---|---|---|---|---|"]

    def group(c: dict[str, Any]) -> str:
        return f"{c['group_ack_p50_ms']:.1f} / {c['group_ack_p99_ms']:.1f}" if "group_ack_p50_ms" in c else "-"

    for variant in ("without", "with"):
        c = m[variant]
        rows.append(f"| {variant} | {c['ack_p50_ms']:.1f} / {c['ack_p99_ms']:.1f} | {c['push_p50_ms']:.1f} / "
                    f"{c['push_p99_ms']:.1f} | {group(c)} | {c['gateway_cpu_ms_per_msg']:.2f} / "
                    f"{c['worker_cpu_ms_per_msg']:.2f} | {c['lost']:.0f} |")
    rows.append("| with / without | " + " / ".join(f"{ratio.get(k, float('nan')):.2f}" for k in ("ack_p50_ms", "ack_p99_ms"))
                + " | " + " / ".join(f"{ratio.get(k, float('nan')):.2f}" for k in ("push_p50_ms", "push_p99_ms"))
                + " | " + " / ".join(f"{ratio.get(k, float('nan')):.2f}" for k in ("group_ack_p50_ms", "group_ack_p99_ms"))
                + " | " + " / ".join(f"{ratio.get(k, float('nan')):.2f}"
                                     for k in ("gateway_cpu_ms_per_msg", "worker_cpu_ms_per_msg")) + " | |")
    sinks = [c["sink"] for c in part["cells"]["with"]]
    rows.append("webhook sink, per run of the with stack: " + "; ".join(
        f"{s['posts']} POSTs, {sum(s['events'].values())} events {s['events']}" for s in sinks))
    return "\n".join(rows)


# -- part 2: a recall in a big group


class Watch:
    """``imflow-loadgen watch`` held open: ``arm(op)``, then ``wait(t0_ns)`` for its JSON line."""

    def __init__(self, binary: Path, options: list[str]) -> None:
        command = [str(binary), "watch", *options]
        print("$ " + " ".join(command), file=sys.stderr, flush=True)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self._line()
        if not line.startswith("ready "):
            self.process.kill()
            raise RuntimeError(f"imflow-loadgen watch: {line!r}, exit {self.process.wait()}")
        self.ready = int(line.split()[1])

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def _say(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._line()

    def arm(self, op: str) -> None:
        assert self._say(f"arm {op}") == f"armed {op}"

    async def wait(self, t0_ns: int, timeout_s: float = 60) -> dict[str, Any]:
        return json.loads(await asyncio.to_thread(self._say, f"wait {t0_ns} {timeout_s}"))

    def close(self) -> dict[str, Any]:
        out, _ = self.process.communicate("", timeout=120)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def redis_work(client: redis_sync.Redis) -> dict[str, float]:
    """The Redis server's CPU seconds and its scripts' calls and µs so far (the whole server:
    other users of it count too)."""
    cpu, calls = client.info("cpu"), client.info("commandstats")
    scripts = [calls.get(f"cmdstat_{name}", {}) for name in ("evalsha", "eval", "fcall")]
    return {"cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "script_calls": sum(c.get("calls", 0) for c in scripts),
            "script_us": sum(c.get("usec", 0) for c in scripts),
            "commands": sum(c.get("calls", 0) for c in calls.values())}


async def timed(watch: Watch, op: str, request, stack: Stack, redis: redis_sync.Redis) -> dict[str, Any]:
    """Arm ``op``, make ``request`` (a coroutine function), then wait for every member's ``op``
    push: the members' arrival figures in ms from the request, the reply's own time, and what
    the gateway and the workers (CPU seconds) and the Redis server (CPU seconds, script calls
    and their time, commands) did from the request until the last arrival."""
    watch.arm(op)
    pids = [process.proc.pid for process in stack.processes]
    redis_before = await asyncio.to_thread(redis_work, redis)
    cpu = [driver.cpu_seconds(pid) for pid in pids]
    t0 = time.time_ns()
    reply = await request()
    reply_ms = (time.time_ns() - t0) / 1e6
    figures = await watch.wait(t0)
    cpu = [driver.cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    redis_after = await asyncio.to_thread(redis_work, redis)
    redis_delta = {key: redis_after[key] - redis_before[key] for key in redis_before}
    latency = figures["latency_ms"]
    return {"reply_ms": round(reply_ms, 2), "p50_ms": latency["p50"], "p99_ms": latency["p99"],
            "max_ms": latency["max"], "got": figures["got"], "missing": figures["missing"],
            "gateway_cpu_s": round(cpu[-1], 3), "worker_cpu_s": round(sum(cpu[:-1]), 3),
            "redis_cpu_s": round(redis_delta["cpu_s"], 3), "redis_script_calls": redis_delta["script_calls"],
            "redis_script_s": round(redis_delta["script_us"] / 1e6, 3), "redis_commands": redis_delta["commands"],
            "reply": reply}


async def make_group(owner: Client, names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A group of ``names`` (``names[0]`` its owner): created empty, then filled 1,000 at a time."""
    start = time.perf_counter()
    group = await owner.request({"op": "create_group", "name": "lifecycle", "members": []})
    created = time.perf_counter() - start
    chunks = []
    for first in range(1, len(names), 1000):
        t0 = time.perf_counter()
        await owner.request({"op": "add_members", "gid": group["gid"], "users": names[first : first + 1000]}, timeout=300)
        chunks.append(round(time.perf_counter() - t0, 3))
        print(f"  add_members {first}..{min(len(names), first + 1000) - 1}: {chunks[-1]:.2f} s", file=sys.stderr, flush=True)
    return group, {"create_s": round(created, 3), "add_members_s": chunks, "total_s": round(time.perf_counter() - start, 3)}


def start_profiles(folder: Path, stack: Stack, seconds: float, native: bool) -> list[subprocess.Popen[bytes]]:
    """py-spy on the gateway and each worker for ``seconds`` (collapsed stacks into ``folder``)."""
    spy = ROOT / ".venv/bin/py-spy"
    spy_path = str(spy) if spy.exists() else shutil.which("py-spy")
    if spy_path is None:
        print("no py-spy (.venv/bin or PATH): not profiled", file=sys.stderr, flush=True)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"worker{i}" for i in range(len(stack.processes) - 1)] + ["gateway"]
    mode = ["--native"] if native else ["--nonblocking"]
    return [subprocess.Popen([spy_path, "record", "--pid", str(process.proc.pid), "--rate", "250", *mode,
                              "--duration", str(int(seconds)), "--format", "raw",
                              "--output", str(folder / f"{name}.txt")], stdout=subprocess.DEVNULL)
            for name, process in zip(names, stack.processes, strict=True)]


async def recall_part(args, sink: Sink) -> dict[str, Any]:
    binary = driver.build()
    folder = Path(tempfile.mkdtemp(prefix="imflow-lifecycle-"))
    tag = uuid.uuid4().hex[:6]
    names = [f"m{i:05d}-{tag}" for i in range(args.members)]
    load = {"before": load_average()}
    sink.take()
    stack = start_stack(args, stack_env("with", sink))
    gateway = stack.processes[-1].proc.pid
    redis_meter = redis_sync.Redis.from_url(args.redis)
    runs: list[dict[str, Any]] = []
    try:
        owner = await stack.connect(names[0])
        print(f"a group of {args.members} ...", file=sys.stderr, flush=True)
        group, creation = await make_group(owner, names)
        conversation = group["conversation"]
        token_file = driver.write_tokens(folder / "tokens", names, SECRET)
        # in a thread: the owner's connection answers the server's pings meanwhile
        options = ["--url", stack.url, "--tokens", str(token_file), "--connections", str(args.members),
                   "--connect-rate", str(args.connect_rate)]
        watch = await asyncio.to_thread(Watch, binary, options)
        watch_result: dict[str, Any] = {}
        try:
            await asyncio.to_thread(driver.wait_quiet, gateway)
            load["online"] = load_average()

            async def send(text: str) -> dict[str, Any]:
                return await owner.send({"conversation": conversation, "body": {"text": text}}, timeout=60)

            async def one_run(n: int) -> dict[str, Any]:
                run: dict[str, Any] = {}
                run["msg"] = await timed(watch, "msg", lambda: send(f"to be recalled {n}"), stack, redis_meter)
                seq = run["msg"].pop("reply")["seq"]
                run["recall"] = await timed(watch, "recalled", lambda: owner.request(
                    {"op": "message.recall", "conversation": conversation, "seq": seq}, timeout=60), stack, redis_meter)
                run["recall"].pop("reply")
                if args.edit:
                    run["msg_2"] = await timed(watch, "msg", lambda: send(f"to be edited {n}"), stack, redis_meter)
                    seq = run["msg_2"].pop("reply")["seq"]
                    run["edit"] = await timed(watch, "edited", lambda: owner.request(
                        {"op": "message.edit", "conversation": conversation, "seq": seq,
                         "body": {"text": f"edited {n}"}}, timeout=60), stack, redis_meter)
                    run["edit"].pop("reply")
                run["load_average"] = load_average()
                await asyncio.to_thread(driver.wait_quiet, gateway)
                return run

            for n in range(1, args.runs + 1):
                print(f"run {n}/{args.runs}: send, recall{', edit' if args.edit else ''} ...", file=sys.stderr, flush=True)
                runs.append(await one_run(n))
                print("  " + json.dumps({k: v for k, v in runs[-1].items() if k != "load_average"}), file=sys.stderr)
            if args.profile:
                print(f"profiling {args.profile_runs} more runs ...", file=sys.stderr, flush=True)
                spies = start_profiles(args.profile / "recall", stack, 600, args.profile_native)
                await asyncio.sleep(2)  # py-spy attached
                for n in range(args.profile_runs):
                    await one_run(100 + n)
                for spy in spies:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                    await asyncio.to_thread(spy.wait, 60)
        finally:
            watch_result = await asyncio.to_thread(watch.close)
            await owner.close()
            await asyncio.to_thread(driver.wait_quiet, gateway)  # 10,000 disconnects handled before the stack is stopped
    finally:
        stop(stack)
    load["after"] = load_average()
    figures = ["p50_ms", "p99_ms", "max_ms", "reply_ms", "gateway_cpu_s", "worker_cpu_s", "redis_cpu_s",
               "redis_script_calls", "redis_script_s", "redis_commands"]
    medians = {kind: {f: statistics.median(r[kind][f] for r in runs) for f in figures}
               for kind in ("msg", "recall", "edit") if kind in runs[0]}
    return {"members": args.members, "online": watch_result.get("connected"), "runs": args.runs,
            "creation": creation, "medians": medians, "runs_raw": runs, "sink": sink.take(),
            "watch": {k: watch_result.get(k) for k in ("connect_s", "connected", "closed", "errors", "cpu", "rss_mb")},
            "load_average": load}


def recall_table(part: dict[str, Any]) -> str:
    rows = [(f"a group of {part['members']:,} members, {part['online']:,} connections online, medians of "
             f"{part['runs']} runs (each figure over the members: the request → a member has the push)"),
            ("| event | push p50 ms | push p99 ms | push max ms | reply ms | gateway / worker CPU s "
             "| Redis CPU s (scripts: calls, s) |"),
            "|---|---|---|---|---|---|---|"]
    names = {"msg": "send (`msg`)", "recall": "recall (`recalled`)", "edit": "edit (`edited`)"}
    for kind, c in part["medians"].items():
        rows.append(f"| {names[kind]} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {c['max_ms']:.0f} | {c['reply_ms']:.0f} | "
                    f"{c['gateway_cpu_s']:.2f} / {c['worker_cpu_s']:.2f} | {c['redis_cpu_s']:.2f} "
                    f"({c['redis_script_calls']:,.0f}, {c['redis_script_s']:.2f}) |")
    creation = part["creation"]
    chunks = creation["add_members_s"]
    rows.append(f"group creation: create {creation['create_s']:.2f} s, add_members of {len(chunks)} chunks "
                f"{min(chunks):.2f}–{max(chunks):.2f} s each, {creation['total_s']:.1f} s in all")
    rows.append(f"webhook sink: {part['sink']['posts']} POSTs, events {part['sink']['events']}")
    return "\n".join(rows)


async def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-lifecycle.json")
    parser.add_argument("--part", choices=["send", "recall", "both"], default="both")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--offline-share", type=float, default=0.2, help="pairs whose receiver is offline")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--group-rate", type=float, default=20, help="group messages with mentions a second (0: none)")
    parser.add_argument("--group-size", type=int, default=20)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--connect-rate", type=float, default=1000)
    parser.add_argument("--no-edit", dest="edit", action="store_false")
    parser.add_argument("--profile", type=Path, help="a folder: py-spy's collapsed stacks (see the docstring)")
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (pauses the processes to sample)")
    parser.add_argument("--gc", help="an experiment: the imflow processes' gc thresholds, e.g. 100000,50,100 (0: gc off)")
    args = parser.parse_args()

    for name in ("IMFLOW_ARCHIVE_CATALOG", "IMFLOW_ARCHIVE_DATA_PATH", "IMFLOW_S3_ENDPOINT", "IMFLOW_S3_KEY_ID",
                 "IMFLOW_S3_SECRET"):
        os.environ.pop(name, None)  # the embedded lake and local attachments: see the docstring
    sink = Sink()
    summary: dict[str, Any] = {"commit": commit(), "cpus": os.cpu_count(), "gc": args.gc}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.part in ("send", "both"):
        summary["send"] = await send_part(args, sink)
        args.json.write_text(json.dumps(summary, indent=2))  # kept if the next part fails
    if args.part in ("recall", "both"):
        summary["recall"] = await recall_part(args, sink)
        args.json.write_text(json.dumps(summary, indent=2))
    print(f"commit {summary['commit']}, {summary['cpus']} CPUs")
    if "send" in summary:
        print(send_table(summary["send"]))
        print("load average (1, 5, 15 min):", summary["send"]["load_average"])
    if "recall" in summary:
        print(recall_table(summary["recall"]))
        print("load average (1, 5, 15 min):", summary["recall"]["load_average"])


if __name__ == "__main__":
    asyncio.run(main())
