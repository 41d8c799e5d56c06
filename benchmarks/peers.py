"""imflow and Centrifugo side by side: the same live-room load, from the same compiled
generator, against one imflow gateway and one Centrifugo, with the ratio per cell.

    scripts/bench peers [--cells 1000x100,5000x100,10000x100] [--runs 3] [--seconds 10]
                        [--warmup 2] [--drain 10] [--posters 10] [--size 100] [--idle 10000] [--no-build]

The servers: one ``imflow gateway`` on the real Kafka and Redis (benchmarks/stack.py; no worker,
rooms need none) with the throttling plugin off (IMFLOW_DISABLED_PLUGINS=throttling), so its
per-viewer sampling is not what is measured; and Centrifugo v6 (``scripts/centrifugo run``:
memory engine, one core through GOMAXPROCS=1 as one gateway process has, client insecure mode,
no history or recovery, as imflow rooms have none; see that script). The generator is
``.cache/bin/imflow-loadgen`` (``scripts/loadgen``, driven through benchmarks/loadgen/driver.py;
both binaries are built first unless --no-build), copied into the run's folder (printed at the
start, with Centrifugo's log and the tokens) so every run uses the same one.

Idle memory first, on both servers fresh: resident size (VmRSS of /proc/PID/status) once the
server is quiet, then with ``--idle`` connections open, authenticated and in the room
(``imflow-loadgen idle``), once that size has settled; the difference per connection.

Then, per cell VIEWERSxRATE, ``--runs`` times, the two servers taking turns (imflow first in
even runs, Centrifugo first in odd ones) and each quiet before its run (every connection of the
previous one closed, under 0.05 cores): ``imflow-loadgen room``
opens VIEWERS connections in one room (channel ``room:bench`` on Centrifugo), the first
``--posters`` of them post RATE times a second in total for ``--warmup`` + ``--seconds``, then
waits up to ``--drain`` for late deliveries. Reported, medians over the runs of each figure on
its own: deliveries/s inside the measured window, the post-to-viewer latency p50/p99 (one
clock: the generator stamps each post), messages lost (a post the server acknowledged that a
viewer still open at the end never got; the generator counts per message), viewers the server
closed, posts acknowledged of those sent in the window (a server that falls behind acknowledges
late: a post not acknowledged by the end of the drain counts as neither expected nor lost), the
generator's CPU in cores (so a reader sees it is not the bottleneck) and the server's
(``server_cores``, sampled every 0.2 s, over the same measured window); and the
ratios imflow / Centrifugo of deliveries/s and of p99.

Output: a markdown table on stdout, every run's generator output in --json
(artifacts/bench-peers.json), with the git state it was measured at (commit, uncommitted files
in gateway/, the generator's sha256) and the load average before and after. On this 2-core machine
the generator, the server and whatever else runs share the cores: compare the two servers
within one run, not figures taken at different times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from loadgen import driver  # benchmarks/ is on the path when run as a script
from stack import SECRET, Stack, arguments

from imflow.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ROOMS = {"imflow": "bench-room", "centrifugo": "room:bench"}
FIGURES = ("deliveries_per_s", "p50_ms", "p99_ms", "lost", "closed", "posts_sent", "posts_acked", "generator_cores",
           "server_cores")


@dataclass
class Server:
    """One server under load: its generator ``--target``, WebSocket URL, pid (for its memory
    and CPU) and the tokens file its connections sign in with (None: anonymous)."""

    target: str
    url: str
    pid: int
    tokens: Path | None

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def generator_args(self) -> list[str]:
        """The generator options that name this server."""
        tokens_ = ["--tokens", str(self.tokens)] if self.tokens else []
        return ["--target", self.target, "--url", self.url, "--room", ROOMS[self.target], *tokens_]


TCP_ESTABLISHED, TCP_CLOSE_WAIT = "01", "08"  # include/net/tcp_states.h, as /proc/net/tcp prints them


def open_connections(port: int) -> int:
    """TCP connections to local ``port`` its server has not closed yet (established, or closed
    by the peer only), from /proc/net/tcp and tcp6."""
    count = 0
    for table_ in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table_}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += int(local.rsplit(":", 1)[1], 16) == port and state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)
    return count


def wait_quiet(server: Server, cores: float = 0.05, window: float = 0.5, timeout: float = 120) -> None:
    """Until the server has closed every client connection and uses less than ``cores`` over
    ``window`` seconds: the previous run's connections gone and their ends handled.
    AssertionError after ``timeout``."""
    seen = {}

    def quiet() -> bool:
        before = driver.cpu_seconds(server.pid)
        time.sleep(window)
        used = driver.cpu_seconds(server.pid) - before
        seen.update(connections=open_connections(server.port), cores=round(used / window, 2))
        return seen["connections"] == 0 and seen["cores"] < cores

    try:
        wait_until(quiet, f"{server.target} quiet", timeout=timeout, interval=0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None


def settled_rss_kb(pid: int, tolerance: float = 0.01, window: float = 1.0, timeout: float = 20) -> int:
    """The process's resident size (VmRSS) once it changes by less than ``tolerance`` (a
    fraction) over ``window`` seconds; its last size after ``timeout``."""
    last = [driver.rss_kb(pid)]

    def settled() -> bool:
        time.sleep(window)
        now = driver.rss_kb(pid)
        steady = abs(now - last[0]) <= tolerance * last[0]
        last[0] = now
        return steady

    with contextlib.suppress(AssertionError):  # still moving (a collector at work): take what it is now
        wait_until(settled, "resident size settled", timeout=timeout, interval=0)
    return last[0]


def idle_memory(server: Server, connections: int, loadgen: Path) -> dict[str, float]:
    """Resident size before and with ``connections`` idle connections in the room (opened by
    the generator ``loadgen``), and the difference per connection in kB."""
    wait_quiet(server)
    before = settled_rss_kb(server.pid)
    with driver.Idle(loadgen, [*server.generator_args(), "--connections", str(connections)]) as idle:
        if idle.ready != connections:
            raise RuntimeError(f"imflow-loadgen idle against {server.target}: {idle.ready} of {connections} ready")
        after = settled_rss_kb(server.pid)
    return {"connections": connections, "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
            "per_connection_kb": round((after - before) / connections, 1)}


def room_run(server: Server, viewers: int, rate: int, args) -> dict[str, Any]:
    """One ``imflow-loadgen room`` run against ``server``: its JSON output plus ``server_cores``
    (the server's CPU over the generator's measured window)."""
    wait_quiet(server)
    options = [*server.generator_args(), "--viewers", str(viewers), "--rate", str(rate), "--seconds", str(args.seconds),
               "--warmup", str(args.warmup), "--drain", str(args.drain), "--posters", str(args.posters),
               "--size", str(args.size)]
    with driver.CpuSampler(server.pid) as cpu:
        result = driver.run(args.loadgen, "room", options)
    if not result["posts_acked"]:  # a dead server or broker, not a slow one: no median should hide it
        raise RuntimeError(f"{server.target} acknowledged none of {result['posts_sent']} posts: {result['errors']}")
    result["server_cores"] = cpu.cores(result["cpu"]["from_unix_s"], result["cpu"]["to_unix_s"])
    return result


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one run that the table shows."""
    return {"deliveries_per_s": result["deliveries_per_s"], "p50_ms": result["latency_ms"]["p50"],
            "p99_ms": result["latency_ms"]["p99"], "lost": result["lost"], "closed": sum(result["closed"].values()),
            "posts_sent": result["posts_sent"], "posts_acked": result["posts_acked"],
            "generator_cores": result["cpu"]["cores_used"], "server_cores": result["server_cores"]}


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's median over the runs, on its own."""
    return {name: statistics.median(figures(run)[name] for run in runs) for name in FIGURES}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def table(cells: list[dict[str, Any]], idle: dict[str, dict[str, float]], runs: int) -> str:
    """The markdown summary: one row per cell, then idle memory."""
    per_server = "deliveries/s | p50 / p99 ms | lost (viewers closed) | posts acked / sent | cores: server, generator"
    header = (f"| viewers x posts/s | imflow {per_server} | Centrifugo {per_server} "
              "| deliveries imflow/Centrifugo | p99 imflow/Centrifugo |")
    lines = [f"Medians of {runs} run(s); imflow: one gateway, throttling off; Centrifugo: GOMAXPROCS=1, memory engine.",
             "", header, "|---" * 13 + "|"]
    for cell in cells:
        row = [f"{cell['viewers']:,} x {cell['rate']}"]
        for target in ("imflow", "centrifugo"):
            m = cell[target]["median"]
            row += [f"{m['deliveries_per_s']:,.0f}", f"{m['p50_ms']:,.1f} / {m['p99_ms']:,.1f}",
                    f"{m['lost']:,.0f} ({m['closed']:,.0f})", f"{m['posts_acked']:,.0f} / {m['posts_sent']:,.0f}",
                    f"{m['server_cores']:.2f}, {m['generator_cores']:.2f}"]
        row += [str(cell["ratios"]["deliveries"]), str(cell["ratios"]["p99"])]
        lines.append("| " + " | ".join(row) + " |")
    if idle:
        lines += ["", "| idle connections | server | RSS before → with them | per connection |", "|---|---|---|---|"]
        for target, memory in idle.items():
            lines.append(f"| {memory['connections']:,} | {target} | {memory['rss_before_mb']} → {memory['rss_after_mb']} MB "
                         f"| {memory['per_connection_kb']} kB |")
    return "\n".join(lines)


def git_state() -> dict[str, str]:
    """The commit measured and the gateway's uncommitted changes (its write path moves)."""
    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("log", "-1", "--oneline"), "gateway_status": git("status", "--short", "gateway")}


def start_centrifugo(folder: Path) -> tuple[subprocess.Popen, str]:
    """``scripts/centrifugo run`` on a free port (its pid is the server's: the script execs it),
    once /health answers; the process and its WebSocket URL."""
    port = free_port()
    log = open(folder / "centrifugo.log", "wb")  # noqa: SIM115 - the process keeps it
    command = [str(ROOT / "scripts/centrifugo"), "run", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"centrifugo exited {process.returncode}: see {folder / 'centrifugo.log'}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, "centrifugo /health", timeout=60, interval=0.2)
    return process, f"ws://127.0.0.1:{port}/connection/websocket"


def build() -> Path:
    """The generator and Centrifugo, each built only if missing or out of date; the generator's path."""
    subprocess.run([str(ROOT / "scripts/centrifugo"), "build"], check=True)
    return driver.build()


def cell(text: str) -> tuple[int, int]:
    viewers, rate = text.lower().split("x")
    return int(viewers), int(rate)


def measure(servers: list[Server], args) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """Idle memory (unless ``--idle 0``), then every cell: (idle by server, cells)."""
    idle = {}
    for server in servers if args.idle else ():  # first, while both are fresh
        print(f"idle memory: {args.idle} connections to {server.target} ...", file=sys.stderr, flush=True)
        idle[server.target] = idle_memory(server, args.idle, args.loadgen)
    cells, turn = [], 0
    for viewers, rate in args.cells:
        runs: dict[str, list] = {server.target: [] for server in servers}
        for run in range(args.runs):
            for server in servers if turn % 2 == 0 else servers[::-1]:
                print(f"{viewers}x{rate} run {run + 1}/{args.runs}: {server.target} ...", file=sys.stderr, flush=True)
                result = room_run(server, viewers, rate, args)
                runs[server.target].append(result)
                print(f"  {figures(result)}", file=sys.stderr, flush=True)
            turn += 1
        summary = {target: {"median": medians(results), "runs": results} for target, results in runs.items()}
        ours, theirs = summary["imflow"]["median"], summary["centrifugo"]["median"]
        summary["ratios"] = {"deliveries": ratio(ours["deliveries_per_s"], theirs["deliveries_per_s"]),
                             "p99": ratio(ours["p99_ms"], theirs["p99_ms"])}
        cells.append({"viewers": viewers, "rate": rate, **summary})
    return idle, cells


def main() -> None:
    parser = arguments(__doc__, "artifacts/bench-peers.json")
    parser.set_defaults(workers=0)  # rooms go gateway -> Kafka -> gateway: no worker on the cores
    parser.add_argument("--cells", type=lambda text: [cell(c) for c in text.split(",")],
                        default=[(1000, 100), (5000, 100), (10000, 100)], help="VIEWERSxPOSTS_PER_S,...")
    parser.add_argument("--seconds", type=float, default=10, help="the measured window of each run")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--drain", type=float, default=10, help="at most this long after the last post for late deliveries")
    parser.add_argument("--posters", type=int, default=10)
    parser.add_argument("--size", type=int, default=100, help="each post's text length in bytes")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections for the memory figure (0: skip it)")
    parser.add_argument("--no-build", action="store_true", help="use the binaries in .cache/bin as they are")
    args = parser.parse_args()

    loadgen = ROOT / ".cache/bin/imflow-loadgen" if args.no_build else build()
    measured_at = git_state()  # the lead's edits may land while this runs
    load_before = os.getloadavg()  # how busy the shared cores were: a reader weighs the figures by it
    args.logs = Path(tempfile.mkdtemp(prefix="imflow-peers-"))
    # a copy: every run uses the same generator even if scripts/loadgen rebuilds it meanwhile
    args.loadgen = Path(shutil.copy2(loadgen, args.logs / loadgen.name))
    measured_at["loadgen_sha256"] = hashlib.sha256(args.loadgen.read_bytes()).hexdigest()
    print(f"logs in {args.logs}", file=sys.stderr, flush=True)
    users = max([args.idle, *(viewers for viewers, _ in args.cells)])
    tokens_file = driver.write_tokens(args.logs / "tokens", [f"viewer{i:05d}" for i in range(users)], SECRET)

    stack = Stack(args.kafka, args.redis, workers=args.workers, gateways=1, env={"IMFLOW_DISABLED_PLUGINS": "throttling"})
    centrifugo = None
    try:
        centrifugo, centrifugo_url = start_centrifugo(args.logs)
        servers = [Server("imflow", stack.url, stack.processes[-1].proc.pid, tokens_file),
                   Server("centrifugo", centrifugo_url, centrifugo.pid, None)]
        idle, cells = measure(servers, args)
        settings = {k: v for k, v in vars(args).items() if k not in ("kafka", "redis", "json", "logs", "loadgen")}
        load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
        report = {"git": measured_at, "load_average_1_5_15_min": load, "settings": settings, "idle": idle, "cells": cells}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(table(cells, idle, args.runs))
        changes = ", ".join(measured_at["gateway_status"].splitlines()) or "none"
        print(f"\nmeasured at {measured_at['commit']}; uncommitted in gateway/: {changes}")
        print(f"load average (1/5/15 min) before {load['before']}, after {load['after']} on {os.cpu_count()} cores")
        for server in servers:  # the last run's connections gone, so each stops cleanly
            wait_quiet(server)
    finally:
        if centrifugo is not None:
            centrifugo.terminate()
            centrifugo.wait(30)
        stack.stop()


if __name__ == "__main__":
    main()
