"""A small asyncio client of the imflow WebSocket protocol (docs/protocol.md).

    async with await Client.connect("ws://127.0.0.1:8080/ws", token) as alice:
        sent = await alice.send_text("bob", "hello")          # resends on timeout, same cmid
        push = await bob.next_message()                      # {"op": "msg", "message": ..., "unread": ...}

Replies are matched to requests by ``ref``; pushes (msg, unread) wait in a queue. A session
ends when its token expires unless ``reauth`` gave it a fresh one first (``expires_at_ms``
says when); the error frame that ended it is in ``errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import Any

import orjson
import websockets


class ClientError(Exception):
    """An error frame from the server."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code = frame.get("code")
        self.frame = frame


class Client:
    def __init__(self, websocket: websockets.ClientConnection, user: str) -> None:
        self.websocket = websocket
        self.user = user
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[dict[str, Any]] = []  # error frames that answered no request
        self.expires_at_ms: int | None = None  # when the session's token expires (server clock, Unix ms)
        self._refs = itertools.count(1)
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._sent: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, token: str, timeout: float = 10.0) -> Client:
        websocket = await websockets.connect(url, max_size=None, open_timeout=timeout, compression=None)
        await websocket.send(orjson.dumps({"op": "auth", "token": token}).decode())
        welcome = orjson.loads(await asyncio.wait_for(websocket.recv(), timeout))
        if welcome.get("op") != "welcome":
            await websocket.close()
            raise ClientError(welcome)
        client = cls(websocket, welcome["user"])
        client.expires_at_ms = welcome.get("expires_at_ms")
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.websocket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    @property
    def closed(self) -> bool:
        return self._reader.done()

    # -- operations

    async def send_text(self, to: str, text: str, cmid: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return await self.send({"to": to, "type": "text", "body": {"text": text}}, cmid, **kwargs)

    async def send(
        self, target: dict[str, Any], cmid: str | None = None, timeout: float = 5.0, attempts: int = 3
    ) -> dict[str, Any]:
        """Send until the server ACKs; a resend uses the same cmid, so it is stored once."""
        cmid = cmid or uuid.uuid4().hex
        future = self._sent.setdefault(cmid, asyncio.get_running_loop().create_future())
        try:
            for attempt in range(attempts):
                ref = next(self._refs)
                reply = self._expect(ref)
                await self._send_frame({"op": "send", "cmid": cmid, "ref": ref, **target})
                done, _ = await asyncio.wait({future, reply}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                self._replies.pop(ref, None)
                if reply in done:
                    reply.result()  # an error frame for this send raises here
                if future in done:
                    return future.result()
                if attempt == attempts - 1:
                    raise TimeoutError(f"no ACK for {cmid} after {attempts} attempts")
            raise AssertionError("unreachable")
        finally:
            self._sent.pop(cmid, None)

    async def send_nowait(self, target: dict[str, Any], cmid: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """Send once without waiting: the future resolves with the 'sent' frame (load generators)."""
        cmid = cmid or uuid.uuid4().hex
        future = self._sent.setdefault(cmid, asyncio.get_running_loop().create_future())
        future.add_done_callback(lambda _: self._sent.pop(cmid, None))
        await self._send_frame({"op": "send", "cmid": cmid, **target})
        return future

    async def ack(self, mids: list[int]) -> dict[str, Any]:
        return await self.request({"op": "ack", "mids": mids})

    async def read(self, conversation: str, seq: int) -> dict[str, Any]:
        return await self.request({"op": "read", "conversation": conversation, "seq": seq})

    async def sync(self, before_mid: int | None = None, limit: int = 100) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "sync", "limit": limit}
        if before_mid is not None:
            frame["before_mid"] = before_mid
        return await self.request(frame)

    async def history(self, conversation: str, before_seq: int | None = None, limit: int = 50) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "history", "conversation": conversation, "limit": limit}
        if before_seq is not None:
            frame["before_seq"] = before_seq
        return await self.request(frame)

    async def delete(self, conversation: str, mid: int) -> dict[str, Any]:
        return await self.request({"op": "delete", "conversation": conversation, "mid": mid})

    async def reauth(self, token: str) -> dict[str, Any]:
        """Give this session a fresh token of the same user before its own expires.

        Returns the ``reauthed`` frame ({user, expires_at_ms, expires_in_ms}); a refused token
        raises ClientError (token_invalid, token_expired, token_revoked, or forbidden when it
        names another user) and the session keeps its old expiry.
        """
        reply = await self.request({"op": "auth", "token": token})
        self.expires_at_ms = reply.get("expires_at_ms")
        return reply

    async def ping(self) -> dict[str, Any]:
        return await self.request({"op": "ping"})

    async def next_message(self, timeout: float = 10.0, op: str = "msg") -> dict[str, Any]:
        """The next push of kind ``op`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                push = await self.pushes.get()
                if push.get("op") == op:
                    return push

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        ref = next(self._refs)
        reply = self._expect(ref)
        await self._send_frame({**frame, "ref": ref})
        try:
            return await asyncio.wait_for(reply, timeout)
        finally:
            self._replies.pop(ref, None)

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything at all (tests of bad input)."""
        await self.websocket.send(data)

    # -- plumbing

    def _expect(self, ref: Any) -> asyncio.Future[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        return future

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        try:
            await self.websocket.send(orjson.dumps(frame).decode())
        except websockets.ConnectionClosed as exc:
            raise ConnectionError(f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})") from exc

    async def _read(self) -> None:
        try:
            async for data in self.websocket:
                self._dispatch(orjson.loads(data))
        except websockets.ConnectionClosed:
            pass
        finally:
            closed = ConnectionError(f"connection closed ({self.websocket.close_code})")
            for future in [*self._replies.values(), *self._sent.values()]:
                if not future.done():
                    future.set_exception(closed)
                    future.add_done_callback(lambda f: f.exception())  # nobody may be waiting

    def _dispatch(self, frame: dict[str, Any]) -> None:
        op, ref = frame.get("op"), frame.get("ref")
        if op == "sent":
            future = self._sent.get(frame["cmid"])
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if ref is not None and ref in self._replies:
            future = self._replies[ref]
            if not future.done():
                if op == "error":
                    future.set_exception(ClientError(frame))
                else:
                    future.set_result(frame)
            return
        if op == "error":
            self.errors.append(frame)
        else:
            self.pushes.put_nowait(frame)
