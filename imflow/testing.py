"""Helpers for tests and benchmarks: run imflow as a subprocess, wait for a condition.

Used by imflow's own tests and benchmarks; plugin authors may use them too.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


async def eventually(check, timeout: float = 30.0, interval: float = 0.1):
    """Await ``check()`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


def wait_until(check, what: str, timeout: float = 30.0, interval: float = 0.1):
    """Call ``check()`` until it returns a truthy value and return that; the synchronous twin
    of :func:`eventually`, for tests that are not coroutines (Selenium, subprocesses).

    Raises AssertionError naming ``what`` and the last value after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last value: {value!r}")
        time.sleep(interval)


def free_port() -> int:
    """A port that was free a moment ago. Another process may take it before it is used: a
    server started on it should go through :func:`start_listening`, which tries again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1 and kept, so no other process can take the
    port (for servers run in this process: ``uvicorn.Server.serve(sockets=[...])``)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


ADDRESS_IN_USE = "address already in use"

# a conversation's settings nobody changed, as each entry of a first sync page carries them
UNCHANGED_SETTINGS = {"pinned": False, "muted": False, "hidden": False, "marked_unread": False}


def start_listening(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path, port: int | None = None,
    ready_path: str = "/readyz", ready_status: int | None = 200, timeout: float = 90.0,
) -> tuple[ImflowProcess, int, httpx.Response]:
    """Start ``imflow <args> --port PORT`` and wait until ``ready_path`` answers with
    ``ready_status`` (with any status if it is None: a test of an unready server).

    A port from :func:`free_port` can be taken by another process (an outgoing connection
    gets ports from the same range) before the server binds it: if the server exits saying
    so, it is started again on a new port. With ``port`` given (a gateway started again where
    its clients expect it) it waits for that port to be free instead. Returns the process,
    its port and the last answer of ``ready_path`` (the caller checks its status: it is not
    ``ready_status`` only if ``timeout`` seconds passed). Raises AssertionError if the process
    exits for another reason or does not answer at all within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    # uvicorn says where it listens at info level, once it holds the port
    verbose = {**os.environ, **env}.get("IMFLOW_LOG_LEVEL", "info").lower() in ("info", "debug")
    attempt = 0
    while True:
        chosen = port or free_port()
        path = log_path if attempt == 0 else log_path.with_name(f"{log_path.stem}-{attempt}{log_path.suffix}")
        process = ImflowProcess([*args, "--port", str(chosen)], env, path, cwd)
        try:
            url = f"http://127.0.0.1:{chosen}{ready_path}"
            answer = process.wait_http(url, timeout=max(1.0, deadline - time.monotonic()))
            # ready only once its dependencies are (a loaded machine may take a while)
            while ready_status is not None and answer.status_code != ready_status and time.monotonic() < deadline:
                time.sleep(0.2)
                answer = process.wait_http(url, timeout=max(1.0, deadline - time.monotonic()))
            if verbose:  # the answer was ours, not another server's that holds the port
                process.wait_output(f":{chosen} (Press CTRL+C to quit)", timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError:
            if process.proc.poll() is None or ADDRESS_IN_USE not in process.output().lower() or time.monotonic() > deadline:
                process.terminate()
                raise
            process.terminate()
            attempt += 1
            time.sleep(0.2)  # when the port was given: let whoever holds it let go
            continue
        return process, chosen, answer


_running: set[subprocess.Popen] = set()


def still_running() -> list[subprocess.Popen]:
    """The imflow processes started through :class:`ImflowProcess` that have not exited."""
    return [proc for proc in _running if proc.poll() is None]


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed half-way must not leave a worker consuming from the shared services."""
    for proc in _running:
        if proc.poll() is None:
            proc.kill()


class ImflowProcess:
    """``imflow <command>`` in a subprocess, its output in a log file, stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imflow", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        _running.add(self.proc)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"imflow exited with {self.proc.returncode}:\n{self.output()}")
            try:
                # patient per request: a loaded machine's readiness check can take seconds, and
                # polls that time out only pile up on the server
                return httpx.get(url, timeout=min(15.0, max(0.5, deadline - time.monotonic())))
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"{url} did not answer in {timeout}s:\n{self.output()}")

    def wait_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"imflow exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed in {timeout}s:\n{self.output()}")
            time.sleep(0.2)

    def stop_gracefully(self, timeout: float = 30.0) -> None:
        """SIGTERM; fails unless the process shuts down cleanly within ``timeout``.

        uvicorn re-raises SIGTERM after its clean shutdown, so -SIGTERM counts as clean too.
        """
        code = self.terminate(timeout)
        assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{self.output()}"
        assert "Traceback" not in self.output(), self.output()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code; kills and fails if it does not stop in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"imflow ignored SIGTERM for {timeout}s:\n{self.output()}") from None
        self._log.close()
        return self.proc.returncode
