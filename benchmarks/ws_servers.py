"""Compare ASGI servers and WebSocket implementations under Starlette for a live-room gateway.

For each candidate (uvicorn with each of its WebSocket implementations and event loops, granian,
hypercorn) a child process serves one minimal Starlette app: ``/ws`` accepts a socket and keeps it
in a set, and a broadcaster sends one prepared text frame to every socket ``--batches-per-s``
times a second, in one of three ways (``--variants``):

- ``A``: one loop of ``await websocket.send_text(text)`` over all sockets;
- ``B``: a writer task per connection fed by a deque and an ``asyncio.Event`` (imflow's
  gateway/hub.py ``Connection`` before issue #14);
- ``C``: (uvicorn only) the fast path: one pre-framed ``bytes`` per batch written with
  ``transport.write`` to every socket, bypassing the ASGI send path and the framing library.

Measured per candidate and variant: gateway RSS per idle connection (``/proc/PID/status`` before
and after N connected, plus asyncio tasks and gc-tracked objects per connection), and while
broadcasting the server's CPU seconds per 1,000 frames (``getrusage`` in the serving process, all
threads), frames/s sent and received, and how late each round finishes against its schedule.
``--breakdown`` adds a tracemalloc run that says which module allocated what per connection;
``--profile`` runs py-spy (``pip install py-spy``) on the server while it broadcasts and splits
its samples into the ASGI send path, framing and the socket write.

The client never parses WebSocket: it does the HTTP upgrade by hand on plain sockets, then reads
and discards bytes in big chunks a few times a second (counting them), so it stays cheap.

    .venv/bin/python benchmarks/ws_servers.py [--connections 10000] [--batches-per-s 10]
        [--frame-bytes 1000] [--seconds 10] [--candidates uvicorn-websockets-uvloop,granian-uvloop]
        [--variants A,B,C] [--breakdown 2000] [--profile] [--json FILE]

Results go to stdout as a table and (``--json``) as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import importlib.util
import gc
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import warnings
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable

# name -> (server, websocket implementation, event loop)
CANDIDATES: dict[str, tuple[str, str, str]] = {
    **{
        f"uvicorn-{ws}-{loop}": ("uvicorn", ws, loop)
        for ws in ("websockets", "websockets-sansio", "wsproto")
        for loop in ("asyncio", "uvloop")
    },
    "granian-asyncio": ("granian", "granian", "asyncio"),
    "granian-uvloop": ("granian", "granian", "uvloop"),
    "hypercorn-asyncio": ("hypercorn", "wsproto", "asyncio"),
    "hypercorn-uvloop": ("hypercorn", "wsproto", "uvloop"),
}
OPTIONAL = {"granian": "granian==2.8.7", "hypercorn": "hypercorn==0.18.0"}  # what the figures in docs/benchmarks.md ran


# ---------------------------------------------------------------------------------------------
# The server side: a minimal Starlette app, configured from the environment of its process.
# ---------------------------------------------------------------------------------------------


def frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame (server to client) carrying ``length`` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size of a process in kB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s() -> float:
    """User + system CPU seconds of this whole process (all threads, so granian's Rust ones too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """The server's state: connected sockets, the broadcaster and what it measured.

    Rounds are scheduled every ``1 / batches_per_s`` s from the start; a round is *finished*
    when its frame has been handed to every socket (A: the loop of awaits returned; B: the last
    writer task's ``send_text`` returned; C: the write loop returned). Lateness = finished −
    scheduled, in ms.
    """

    def __init__(self) -> None:
        self.variant = os.environ.get("WSB_VARIANT", "A")
        self.interval = 1.0 / float(os.environ.get("WSB_BATCHES_PER_S", "10"))
        size = int(os.environ.get("WSB_FRAME_BYTES", "1000"))
        self.text = ("x" * (size - 2)).join("[]")[:size]  # what send_text sends
        self.framed = frame_header(len(self.text.encode())) + self.text.encode()  # what C writes
        self.sockets: dict[Any, Any] = {}  # websocket -> writer (B) / transport (C) / None (A)
        self.frames = 0
        self.pending: dict[int, list[float]] = {}  # round -> [sockets left, scheduled time]
        self.rounds: list[tuple[float, float, float]] = []  # (scheduled, started, finished)
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.window: dict[str, float] = {}
        self.traced: tracemalloc.Snapshot | None = None
        self.baseline_types: collections.Counter[str] = collections.Counter()

    def add(self, websocket: Any) -> None:
        """Register an accepted socket (B: with its writer task; C: with its transport)."""
        if self.variant == "B":
            self.sockets[websocket] = Writer(websocket, self)
        elif self.variant == "C":
            self.sockets[websocket] = websocket.scope["wsb.transport"]
        else:
            self.sockets[websocket] = None

    def remove(self, websocket: Any) -> None:
        """Forget a socket that went away (B: cancel its writer)."""
        writer = self.sockets.pop(websocket, None)
        if isinstance(writer, Writer):
            writer.task.cancel()

    def delivered(self, seq: int) -> None:
        """B: one writer sent round ``seq``; the last one marks the round finished."""
        self.frames += 1
        entry = self.pending.get(seq)
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                del self.pending[seq]
                self.rounds.append((entry[1], entry[2], time.monotonic()))

    async def broadcast(self, seconds: float) -> dict[str, Any]:
        """Send a round every interval for ``seconds``; returns what the window measured."""
        start = time.monotonic()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.frames = 0
        self.rounds = []
        self.pending = {}
        seq = 0
        while True:
            scheduled = start + seq * self.interval
            if scheduled - start >= seconds or time.monotonic() - start >= seconds:
                break  # the window is over (an overloaded variant does not start more rounds)
            # Yield at least once a round, even when behind, so the loop serves I/O and timers.
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            started = time.monotonic()
            if self.variant == "A":
                text = self.text
                for websocket in list(self.sockets):
                    try:
                        await websocket.send_text(text)
                        self.frames += 1
                    except Exception:  # a socket that went away; its reader removes it
                        pass
                self.rounds.append((scheduled, started, time.monotonic()))
            elif self.variant == "B":
                writers = list(self.sockets.values())
                self.pending[seq] = [len(writers), scheduled, started]
                for writer in writers:
                    writer.push(seq)
            else:
                framed = self.framed
                for transport in self.sockets.values():
                    if not transport.is_closing():
                        transport.write(framed)
                        self.frames += 1
                self.rounds.append((scheduled, started, time.monotonic()))
            seq += 1
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        elapsed = time.monotonic() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        late = sorted((finished - scheduled) * 1000 for scheduled, _, finished in self.rounds)
        spans = sorted((finished - started) * 1000 for _, started, finished in self.rounds)
        return {
            "elapsed_s": elapsed,
            "user_s": cpu1.ru_utime - cpu0.ru_utime,
            "sys_s": cpu1.ru_stime - cpu0.ru_stime,
            "frames": self.frames,
            "rounds_due": round(seconds / self.interval),
            "rounds_finished": len(late),  # B: rounds every writer had sent by the end of the window
            "late_ms": summary(late),
            "round_ms": summary(spans),
            "stats": self.stats(),
        }

    def stats(self) -> dict[str, Any]:
        """pid, connections, asyncio tasks, RSS (kB), CPU (s), frames sent, gc-tracked objects."""
        return {
            "pid": os.getpid(),
            "connections": len(self.sockets),
            "tasks": len(asyncio.all_tasks()),
            "rss_kb": rss_kb(),
            "cpu_s": cpu_s(),
            "frames": self.frames,
            "gc_objects": len(gc.get_objects()),
        }


class Writer:
    """Variant B: one connection's writer task, woken by an Event per queued frame (imflow today)."""

    __slots__ = ("bench", "queue", "ready", "task", "websocket")

    def __init__(self, websocket: Any, bench: Bench) -> None:
        self.websocket = websocket
        self.bench = bench
        self.queue: deque[int] = deque()
        self.ready = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    def push(self, seq: int) -> None:
        """Queue round ``seq`` and wake the writer."""
        self.queue.append(seq)
        self.ready.set()

    async def run(self) -> None:
        """Send queued rounds until cancelled or the socket fails."""
        try:
            while True:
                while not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                seq = self.queue.popleft()
                await self.websocket.send_text(self.bench.text)
                self.bench.delivered(seq)
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away
            return


def make_app() -> Any:
    """The Starlette app: /ws, and /stats /start /stop /types /trace for the driver."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    bench = Bench()
    if os.environ.get("WSB_TRACEMALLOC") == "1":
        tracemalloc.start(1)

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        bench.add(websocket)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            bench.remove(websocket)

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(bench.stats())

    async def mark(request: Request) -> JSONResponse:
        """Baseline for /types and /trace (taken with the server warm, before the N connect)."""
        gc.collect()
        bench.baseline_types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        if tracemalloc.is_tracing():
            bench.traced = tracemalloc.take_snapshot()
        return JSONResponse(bench.stats())

    async def types(request: Request) -> JSONResponse:
        """gc-tracked objects per connection by type, against the /mark baseline."""
        gc.collect()
        n = max(1, len(bench.sockets))
        now = collections.Counter(type(o).__name__ for o in gc.get_objects())
        diff = {name: round((now[name] - bench.baseline_types[name]) / n, 2) for name in now}
        top = sorted(((v, k) for k, v in diff.items() if v >= 0.5), reverse=True)[:25]
        return JSONResponse({k: v for v, k in top})

    async def trace(request: Request) -> JSONResponse:
        """tracemalloc bytes per connection by allocating file (``?by=lineno``: by line), against
        the /mark baseline."""
        if bench.traced is None:
            return JSONResponse({})
        gc.collect()
        n = max(1, len(bench.sockets))
        key = request.query_params.get("by", "filename")
        stats = tracemalloc.take_snapshot().compare_to(bench.traced, key)
        by_file: dict[str, float] = {}
        for stat in stats:
            frame = stat.traceback[0]
            name = frame.filename if key == "filename" else f"{frame.filename}:{frame.lineno}"
            for marker in ("site-packages/", "python3.11/"):
                if marker in name:
                    name = name.split(marker, 1)[1]
            by_file[name] = by_file.get(name, 0) + stat.size_diff / n
        total = sum(by_file.values())
        top = sorted(by_file.items(), key=lambda kv: -kv[1])[: int(request.query_params.get("top", "20"))]
        return JSONResponse({"total_bytes_per_conn": round(total), "by_file": {k: round(v) for k, v in top}})

    async def start(request: Request) -> JSONResponse:
        seconds = float(request.query_params["seconds"])
        bench.task = asyncio.get_running_loop().create_task(bench.broadcast(seconds))
        return JSONResponse(bench.stats())

    async def result(request: Request) -> JSONResponse:
        """What the broadcast window measured (waits for its end)."""
        assert bench.task is not None
        return JSONResponse(await bench.task)

    starlette = Starlette(
        routes=[
            WebSocketRoute("/ws", ws_endpoint),
            Route("/stats", stats),
            Route("/mark", mark),
            Route("/types", types),
            Route("/trace", trace),
            Route("/start", start),
            Route("/result", result),
        ]
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # Outside Starlette (which wraps ``send``): uvicorn's ``send`` is its protocol's bound
        # ``asgi_send``, whose owner holds the transport variant C writes to.
        if scope["type"] == "websocket":
            scope["wsb.transport"] = getattr(getattr(send, "__self__", None), "transport", None)
        await starlette(scope, receive, send)

    return app


def summary(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of sorted ``values`` (empty: {})."""
    if not values:
        return {}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(values[-1], 1)}


def __getattr__(name: str) -> Any:
    # ``ws_servers:app`` for servers that import the app by name (granian's worker); built lazily
    # so the driver and client never import Starlette.
    if name == "app":
        globals()["app"] = make_app()
        return globals()["app"]
    raise AttributeError(name)


def serve(server: str, ws: str, loop: str, port: int, connections: int) -> None:
    """Run one candidate in this process (granian: its worker is a child of this one)."""
    warnings.filterwarnings("ignore", message=".*implementation is deprecated")  # uvicorn, ws=websockets
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "ws_servers:app",
            host="127.0.0.1",
            port=port,
            ws=ws,
            loop=loop,
            ws_ping_interval=None,  # the raw client never answers pings
            ws_ping_timeout=None,
            backlog=4096,
            log_level="warning",
            lifespan="off",
        )
    elif server == "granian":
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
        from granian.server import Server

        Server(
            "ws_servers:app",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops(loop),
            websockets=True,
            backlog=4096,
            backpressure=connections + 1000,  # default backlog/workers caps concurrent sockets
            log_level=LogLevels.warning,
        ).serve()
    elif server == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.backlog = 4096
        config.loglevel = "WARNING"
        config.accesslog = None
        if loop == "uvloop":
            import uvloop

            uvloop.run(hypercorn_serve(make_app(), config))
        else:
            asyncio.run(hypercorn_serve(make_app(), config))
    else:
        raise SystemExit(f"unknown server {server}")


# ---------------------------------------------------------------------------------------------
# The client: hand-made upgrades on plain sockets, then bytes read in big chunks and counted.
# ---------------------------------------------------------------------------------------------


def client(port: int, connections: int, poll_s: float) -> None:
    """Open ``connections`` WebSockets to 127.0.0.1:port/ws; print ``ready N``; then count bytes.

    Commands on stdin, one a line: ``count`` prints ``bytes CPU_S``; ``quit`` closes all.
    """
    request_lines = (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    socks: list[socket.socket] = []
    received = 0
    chunk = 200
    for first in range(0, connections, chunk):
        batch = []
        for _ in range(min(chunk, connections - first)):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(request_lines.format(port=port, key=key).encode())
            batch.append(s)
        for s in batch:
            data = b""
            while b"\r\n\r\n" not in data:
                more = s.recv(4096)
                if not more:
                    raise SystemExit(f"server closed during the handshake after {len(socks)}")
                data += more
            if not data.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"upgrade refused: {data[:200]!r}")
            received += len(data) - data.index(b"\r\n\r\n") - 4
            s.setblocking(False)
            socks.append(s)
    print(f"ready {len(socks)}", flush=True)
    poller = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    buf = bytearray(1 << 20)
    stdin_fd = sys.stdin.fileno()
    while True:
        # Sleep first so each socket has several frames waiting: one recv per socket per poll.
        time.sleep(poll_s)
        for fd, _ in poller.poll(0):
            if fd == stdin_fd:
                line = sys.stdin.readline().strip()
                if line == "count":
                    print(f"bytes {received} {cpu_s():.3f}", flush=True)
                elif line in ("quit", ""):
                    for s in socks:
                        s.close()
                    return
                continue
            try:
                n = by_fd[fd].recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                poller.unregister(fd)
            received += n


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------


def http(port: int, path: str, timeout: float = 120) -> Any:
    """GET a control endpoint of the server; its JSON reply."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        return json.loads(reply.read())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` (exceptions count as not yet) until truthy; TimeoutError(what) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(0.1)
    raise TimeoutError(what)


def spawn(args: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    """Run this script with ``args`` in a child process of its own process group."""
    return subprocess.Popen(
        [PYTHON, str(Path(__file__).resolve()), *args],
        env={**os.environ, "PYTHONPATH": str(HERE), **(env or {})},
        text=True,
        start_new_session=True,  # one process group per child: killed as a group at the end
        **kw,
    )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group, SIGKILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def open_clients(port: int, connections: int, procs: int, poll_s: float) -> list[subprocess.Popen[str]]:
    """Start ``procs`` client processes sharing ``connections``; return once all are connected."""
    share = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    clients = [
        spawn(
            ["client", "--port", str(port), "--connections", str(n), "--poll-s", str(poll_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for n in share
        if n
    ]
    for proc in clients:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"client failed: {line!r}")
    return clients


def client_count(clients: list[subprocess.Popen[str]]) -> tuple[int, float]:
    """Bytes received so far and CPU seconds used, summed over the client processes."""
    total, cpu = 0, 0.0
    for proc in clients:
        assert proc.stdin and proc.stdout
        proc.stdin.write("count\n")
        proc.stdin.flush()
    for proc in clients:
        _, received, used = proc.stdout.readline().split()  # type: ignore[union-attr]
        total += int(received)
        cpu += float(used)
    return total, cpu


def profile_summary(raw: Path) -> dict[str, float]:
    """Split py-spy raw (collapsed) samples into inclusive shares (% of all samples) by layer."""
    rules = {
        # the transport's write down to the send syscall (uvloop's UVStream or asyncio's transport)
        "socket_write": (
            "UVStream_write",
            "UVStream__buffer_write",
            "_SelectorSocketTransport.write",
            "_SelectorTransport.write",
            "sock_send",
        ),
        # building the frame: websockets (new and legacy) and wsproto
        "framing": ("(websockets/frames.py", "(websockets/protocol.py", "(websockets/legacy/framing.py", "(wsproto/"),
        "uvicorn_send": ("(uvicorn/protocols/websockets/",),
        "starlette_send": ("(starlette/websockets.py",),
        "writer_task_wakeup": ("Writer.run (ws_servers.py", "(asyncio/locks.py"),
        "broadcast_loop": ("Bench.broadcast (ws_servers.py",),
        "gc": ("gcmodule.c", "gc_collect"),
    }
    totals = collections.Counter[str]()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        for bucket, needles in rules.items():
            if any(needle in stack for needle in needles):
                totals[bucket] += n
    shares = {bucket: round(100 * totals[bucket] / max(1, samples), 1) for bucket in rules}
    # what the ASGI send path costs on top of the write itself (framing included)
    shares["send_path_minus_write"] = round(max(0.0, shares["starlette_send"] - shares["socket_write"]), 1)
    return shares | {"samples": samples}


def run_candidate(name: str, variant: str, args: argparse.Namespace, *, trace: bool = False) -> dict[str, Any]:
    """Start one server, connect N idle sockets, measure memory, broadcast, measure CPU; kill all."""
    server, ws, loop = CANDIDATES[name]
    port = free_port()
    connections = args.breakdown if trace else args.connections
    env = {
        "WSB_VARIANT": variant,
        "WSB_BATCHES_PER_S": str(args.batches_per_s),
        "WSB_FRAME_BYTES": str(args.frame_bytes),
        "WSB_TRACEMALLOC": "1" if trace else "0",
    }
    proc = spawn(
        ["serve", "--server", server, "--ws", ws, "--loop", loop, "--port", str(port), "--connections", str(connections)], env=env
    )
    clients: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {"candidate": name, "variant": variant, "connections": connections}
    try:
        wait_for(lambda: http(port, "/stats"), 30, f"{name} to listen")
        # Warm up (imports done lazily on the first connection), then the baseline.
        stop_all(open_clients(port, 10, 1, 0.05))
        wait_for(lambda: http(port, "/stats")["connections"] == 0, 10, "warm-up sockets to go")
        time.sleep(0.5)
        base = http(port, "/mark")
        started = time.monotonic()
        clients = open_clients(port, connections, args.client_procs, args.poll_s)
        result["connect_s"] = round(time.monotonic() - started, 2)
        wait_for(lambda: http(port, "/stats")["connections"] == connections, 60, "all sockets registered")
        time.sleep(2)  # idle
        idle = http(port, "/stats")
        pid = idle["pid"]
        result["server_pid_is_child"] = pid != proc.pid
        result["idle_rss_mb"] = round(idle["rss_kb"] / 1024, 1)
        result["base_rss_mb"] = round(base["rss_kb"] / 1024, 1)
        result["kb_per_conn"] = round((idle["rss_kb"] - base["rss_kb"]) / connections, 2)
        result["tasks_per_conn"] = round((idle["tasks"] - base["tasks"]) / connections, 2)
        result["gc_objects_per_conn"] = round((idle["gc_objects"] - base["gc_objects"]) / connections, 1)
        if trace:
            result["trace"] = http(port, "/trace")
            result["trace_lines"] = http(port, "/trace?by=lineno&top=80")
            result["types"] = http(port, "/types")
            return result
        if args.seconds <= 0:
            return result
        got0, ccpu0 = client_count(clients)
        http(port, f"/start?seconds={args.seconds}")
        profiler = None
        if args.profile:
            out = Path(args.profile_dir) / f"{name}-{variant}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            profiler = subprocess.Popen(
                [
                    str(Path(PYTHON).parent / "py-spy"),
                    "record",
                    "--native",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "-d",
                    str(max(1, int(args.seconds) - 1)),
                    "-p",
                    str(pid),
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(args.seconds)
        window = http(port, "/result", timeout=300)
        got1, ccpu1 = client_count(clients)
        if profiler is not None:
            profiler.wait(60)
            result["profile"] = profile_summary(out) if out.exists() else {}
        frame_wire = args.frame_bytes + len(frame_header(args.frame_bytes))
        frames = window["frames"]
        result.update(
            {
                "frames_per_s": round(frames / window["elapsed_s"]),
                "offered_per_s": round(connections * args.batches_per_s),
                "received_per_s": round((got1 - got0) / frame_wire / window["elapsed_s"]),
                "cpu_ms_per_1000_frames": round(1000 * (window["user_s"] + window["sys_s"]) / max(1, frames) * 1000, 1),
                "user_ms_per_1000_frames": round(1000 * window["user_s"] / max(1, frames) * 1000, 1),
                "sys_ms_per_1000_frames": round(1000 * window["sys_s"] / max(1, frames) * 1000, 1),
                "server_cores": round((window["user_s"] + window["sys_s"]) / window["elapsed_s"], 2),
                "client_cores": round((ccpu1 - ccpu0) / window["elapsed_s"], 2),
                "rounds": f"{window['rounds_finished']}/{window['rounds_due']}",
                "late_ms": window["late_ms"],
                "round_ms": window["round_ms"],
                "busy_rss_mb": round(window["stats"]["rss_kb"] / 1024, 1),
            }
        )
        return result
    except Exception as error:  # one candidate failing must not stop the others
        result["error"] = f"{type(error).__name__}: {error}"
        return result
    finally:
        stop_all(clients)
        stop_process(proc)


def stop_all(clients: list[subprocess.Popen[str]]) -> None:
    """Ask the clients to close their sockets and exit; kill those that do not."""
    for proc in clients:
        with contextlib.suppress(Exception):
            assert proc.stdin
            proc.stdin.write("quit\n")
            proc.stdin.flush()
    for proc in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        stop_process(proc)


def print_row(r: dict[str, Any]) -> None:
    """One line of results on stdout (the JSON keeps everything)."""
    if "error" in r:
        print(f"{r['candidate']:<32} {r['variant']}  ERROR {r['error']}", flush=True)
        return
    late = r.get("late_ms", {})
    print(
        f"{r['candidate']:<32} {r['variant']}  connect {r['connect_s']} s  {r['kb_per_conn']:>6} kB/conn "
        f"{r['tasks_per_conn']:>4} tasks "
        f"{r['gc_objects_per_conn']:>6} objs | "
        f"{r.get('cpu_ms_per_1000_frames', '-'):>6} ms CPU/1k frames (user {r.get('user_ms_per_1000_frames', '-')} "
        f"sys {r.get('sys_ms_per_1000_frames', '-')})  {r.get('frames_per_s', '-'):>7} sent/s "
        f"{r.get('received_per_s', '-'):>7} recv/s  cores {r.get('server_cores', '-')} (client "
        f"{r.get('client_cores', '-')})  rounds {r.get('rounds', '-')}  late p50/p99/max "
        f"{late.get('p50', '-')}/{late.get('p99', '-')}/{late.get('max', '-')} ms"
        + (f"  profile {r['profile']}" if r.get("profile") else ""),
        flush=True,
    )


def main() -> None:
    """The CLI: the driver by default, ``serve``/``client`` for its children."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve", help="(internal) run one candidate server")
    p_serve.add_argument("--server", required=True)
    p_serve.add_argument("--ws", required=True)
    p_serve.add_argument("--loop", required=True)
    p_serve.add_argument("--port", type=int, required=True)
    p_serve.add_argument("--connections", type=int, default=10000)
    p_client = sub.add_parser("client", help="(internal) raw WebSocket byte counter")
    p_client.add_argument("--port", type=int, required=True)
    p_client.add_argument("--connections", type=int, required=True)
    p_client.add_argument("--poll-s", type=float, default=0.25)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--batches-per-s", type=float, default=10)
    parser.add_argument("--frame-bytes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10, help="broadcast window; 0 = idle memory only")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list of " + ", ".join(CANDIDATES))
    parser.add_argument("--variants", default="A,B,C", help="A loop of awaits, B writer task each, C pre-framed write")
    parser.add_argument("--breakdown", type=int, default=0, help="also a tracemalloc run at this many connections")
    parser.add_argument("--profile", action="store_true", help="py-spy the server while it broadcasts")
    parser.add_argument("--profile-dir", default=str(ROOT / "artifacts" / "ws-servers"))
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--poll-s", type=float, default=0.25, help="client: seconds between reads of all sockets")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args.server, args.ws, args.loop, args.port, args.connections)
    if args.command == "client":
        return client(args.port, args.connections, args.poll_s)

    results = []
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name}; pick from {', '.join(CANDIDATES)}")
        server = CANDIDATES[name][0]
        if server != "uvicorn" and importlib.util.find_spec(server) is None:
            # not dependencies of imflow: only this comparison runs them
            raise SystemExit(f"{name} needs {server}: .venv/bin/pip install {OPTIONAL[server]}")
        for variant in args.variants.split(","):
            if variant == "C" and CANDIDATES[name][0] != "uvicorn":
                continue  # the transport fast path is uvicorn's protocol's transport
            result = run_candidate(name, variant, args)
            print_row(result)
            results.append(result)
        if args.breakdown:
            result = run_candidate(name, "A", args, trace=True)
            shown = ("kb_per_conn", "trace", "trace_lines", "types", "error")
            print(f"{name} breakdown at {args.breakdown}: {json.dumps({k: result.get(k) for k in shown})}", flush=True)
            results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
