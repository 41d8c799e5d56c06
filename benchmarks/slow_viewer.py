"""A viewer that stops reading, in a busy live room: how soon the gateway closes it (4008), how
much it held for it meanwhile, and whether the other viewers' delay changes.

    scripts/bench slow-viewer [--viewers 1000] [--rate 100] [--size 8000] [--seconds 15] [--runs 3]

One ``imflow gateway`` (throttling off) on the real Kafka and Redis. Each run is a pair, in
turn: the room loaded by ``imflow-loadgen room`` alone, then the same load with one more viewer
that joins and never reads again (a real WebSocket with a 4 kB receive buffer, as a phone that
froze). Posts of --size bytes at --rate a second make --size x --rate bytes a second for every
viewer (800 kB/s by default), so the stuck viewer falls behind within seconds.

Measured: from the first post to the close (the gateway's ``imflow_slow_connections_closed_total``
polled every 100 ms), split into the time the kernel's socket buffers took to fill (the gateway
sees nothing until they are full), the time to pass IMFLOW_OUTBOUND_BUFFER_BYTES, and the
IMFLOW_SLOW_CONSUMER_SECONDS rule; the gateway's resident memory over the run; the other
viewers' p50/p99 with and without the stuck one (medians of --runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from loadgen import driver
from stack import SECRET, Stack

from imflow.core import tokens

ROOM = "bench-room"


async def slow_closes(http: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{http}/metrics", timeout=5)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("imflow_slow_connections_closed_total "))


async def stuck_viewer(url: str) -> websockets.ClientConnection:
    """Joins the room, then never reads: a 4 kB receive buffer and nobody calling recv."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    ws = await websockets.connect(url, sock=sock, max_queue=1, compression=None)
    await ws.send(orjson.dumps({"op": "auth", "token": tokens.issue(SECRET, "stuck-viewer", 3600)}).decode())
    await ws.recv()  # welcome
    await ws.send(orjson.dumps({"op": "room.join", "room": ROOM, "ref": 1}).decode())
    await ws.recv()  # joined: from now on it reads nothing
    return ws


async def one_run(binary: Path, stack: Stack, options: list[str], stuck: bool) -> dict[str, Any]:
    gateway = stack.processes[-1].proc.pid
    viewer = await stuck_viewer(stack.url) if stuck else None
    before = await slow_closes(stack.http[0])
    generator = await asyncio.create_subprocess_exec(str(binary), "room", *options, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE)
    closed_at = None
    rss_peak = driver.rss_kb(gateway)
    posting_from = None
    assert generator.stderr is not None
    stderr_lines: list[str] = []

    async def watch_stderr() -> None:  # the generator says when its warm-up (the first posts) starts
        nonlocal posting_from
        assert generator.stderr is not None
        async for line in generator.stderr:
            text = line.decode(errors="replace")
            stderr_lines.append(text)
            if posting_from is None and " viewers in " in text:  # all joined: posting starts now
                posting_from = time.monotonic()

    reader = asyncio.create_task(watch_stderr())
    while generator.returncode is None:
        rss_peak = max(rss_peak, driver.rss_kb(gateway))
        if stuck and closed_at is None and await slow_closes(stack.http[0]) > before:
            closed_at = time.monotonic()
        try:
            await asyncio.wait_for(generator.wait(), 0.1)
        except TimeoutError:
            pass
    out = await generator.stdout.read() if generator.stdout else b""
    await reader
    if not out.strip() or generator.returncode:
        raise RuntimeError("the load generator failed:\n" + "".join(stderr_lines[-10:]))
    result = json.loads(out)
    if not result["deliveries_per_s"]:
        print("".join(stderr_lines[-10:]), file=sys.stderr)
    if viewer is not None:
        await viewer.close()
    latency = result["latency_ms"]
    return {
        "stuck_viewer": stuck, "p50_ms": latency["p50"], "p99_ms": latency["p99"], "lost": result["lost"],
        "deliveries_per_s": result["deliveries_per_s"], "gateway_rss_peak_mb": round(rss_peak / 1024, 1),
        "closed_after_first_post_s": (round(closed_at - posting_from, 2)
                                      if closed_at is not None and posting_from is not None else None),
        "closed": closed_at is not None,
    }


async def main_async(args) -> dict[str, Any]:
    binary = driver.build()
    folder = Path(tempfile.mkdtemp(prefix="imflow-slow-viewer-"))
    token_file = driver.write_tokens(folder / "tokens", [f"viewer{i:05d}" for i in range(args.viewers)], SECRET)
    env = {"IMFLOW_DISABLED_PLUGINS": "throttling", "IMFLOW_THROTTLE_ROOM_INBOUND_RATE": "1000000",
           "IMFLOW_ROOMS_MAX_TEXT": str(args.size)}  # posts as long as --size
    stack = Stack(args.kafka, args.redis, workers=0, gateways=1, env=env)
    options = ["--target", "imflow", "--url", stack.url, "--tokens", str(token_file), "--room", ROOM,
               "--viewers", str(args.viewers), "--rate", str(args.rate), "--size", str(args.size),
               "--seconds", str(args.seconds), "--warmup", "2", "--drain", "5"]
    runs: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            for stuck in (False, True):
                print(f"run {run}/{args.runs}, stuck viewer: {stuck} ...", file=sys.stderr, flush=True)
                runs.append(await one_run(binary, stack, options, stuck))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                driver.wait_quiet(stack.processes[-1].proc.pid)
    finally:
        stack.stop()

    def median(stuck: bool, key: str) -> float | None:
        values = [r[key] for r in runs if r["stuck_viewer"] == stuck and r[key] is not None]
        return statistics.median(values) if values else None

    return {"viewers": args.viewers, "rate": args.rate, "size": args.size, "bytes_per_s_per_viewer": args.rate * args.size,
            "runs": runs, "median": {
                "without": {k: median(False, k) for k in ("p50_ms", "p99_ms", "deliveries_per_s", "gateway_rss_peak_mb")},
                "with": {k: median(True, k) for k in ("p50_ms", "p99_ms", "deliveries_per_s", "gateway_rss_peak_mb",
                                                      "closed_after_first_post_s")},
                "closed_in_every_run": all(r["closed"] for r in runs if r["stuck_viewer"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-slow-viewer.json"))
    args = parser.parse_args()
    summary = asyncio.run(main_async(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["median"], indent=2))


if __name__ == "__main__":
    main()
