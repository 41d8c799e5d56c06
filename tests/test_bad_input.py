"""Whatever a client sends, it gets an error frame or a close code with a stable code, nothing
is stored, and no process crashes. Run on both stacks."""

from __future__ import annotations

import base64
import json

import jwt
import orjson
import pytest
import websockets

from imflow.client import Client, ClientError
from imflow.core.models import direct_conversation


async def raw_session(stack, first_frame: str | bytes):
    """Open a socket, send one frame, return (the frames received, the close code)."""
    frames = []
    async with websockets.connect(stack.url(), max_size=None) as ws:
        await ws.send(first_frame)
        try:
            async for data in ws:
                frames.append(orjson.loads(data))
        except websockets.ConnectionClosed:
            pass
    return frames, ws.close_code


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token_of", "code"),
    [
        (lambda stack, user: stack.token(user, ttl=-10), "token_expired"),
        (lambda stack, user: jwt.encode({"sub": user, "exp": 4_000_000_000}, "not-the-secret-" + "x" * 32, algorithm="HS256"), "token_invalid"),
        (lambda stack, user: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': user, 'exp': 4_000_000_000})}.", "token_invalid"),
        (lambda stack, user: jwt.encode({"sub": user, "exp": 4_000_000_000}, "x" * 64, algorithm="HS512"), "token_invalid"),
        (lambda stack, user: "garbage", "token_invalid"),
    ],
    ids=["expired", "forged", "alg-none", "wrong-alg", "garbage"],
)
async def test_bad_tokens_are_refused_with_4401(stack, users, token_of, code) -> None:
    frames, close_code = await raw_session(stack, orjson.dumps({"op": "auth", "token": token_of(stack, users.alice)}))
    assert [f["code"] for f in frames] == [code]
    assert close_code == 4401


async def test_first_frame_must_be_auth(stack, users) -> None:
    frames, close_code = await raw_session(stack, orjson.dumps({"op": "send", "cmid": "x", "to": users.bob, "body": {"text": "hi"}}))
    assert [f["code"] for f in frames] == ["unauthenticated"] and close_code == 4401
    frames, close_code = await raw_session(stack, b"\xff\xfe not json")
    assert [f["code"] for f in frames] == ["bad_json"] and close_code == 4401


BAD_FRAMES = [
    ("{not json", "bad_json"),
    ("[1, 2, 3]", "bad_frame"),
    ('"just a string"', "bad_frame"),
    ('{"op": "teleport"}', "unknown_op"),
    ('{"no": "op"}', "unknown_op"),
    ('{"op": "send", "cmid": "c1", "to": "BOB", "body": {"text": 5}}', "bad_frame"),
    ('{"op": "send", "cmid": "c2", "to": "BOB", "body": "hello"}', "bad_frame"),
    ('{"op": "send", "cmid": "c3", "body": {"text": "no target"}}', "bad_frame"),
    ('{"op": "send", "cmid": "", "to": "BOB", "body": {"text": "empty cmid"}}', "bad_frame"),
    ('{"op": "send", "cmid": "c4", "to": "../etc", "body": {"text": "bad user"}}', "bad_frame"),
    ('{"op": "send", "cmid": "c5", "to": "BOB", "body": {"text": "x"}, "extra": 1}', "bad_frame"),
    ('{"op": "ack", "mids": "all"}', "bad_frame"),
    ('{"op": "ack", "mids": [true]}', "bad_frame"),
    ('{"op": "ack", "mids": [9007199254740992]}', "bad_frame"),
    ('{"op": "ack", "mids": [-1]}', "bad_frame"),
    ('{"op": "ack", "mids": [1e400]}', "bad_json"),
    ('{"op": "ack", "mids": [123456789012345678901234567890]}', "bad_frame"),
    ('{"op": "read", "conversation": "p:a:b", "seq": 1.5}', "bad_frame"),
    ('{"op": "sync", "limit": 100000}', "bad_frame"),
    ('{"op": "history", "conversation": "x:y"}', "bad_frame"),
    ('{"op": "auth", "token": "again"}', "token_invalid"),  # a re-authentication with a bad token
]


async def test_bad_frames_get_error_frames_and_store_nothing(stack, users) -> None:
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        for text, _ in BAD_FRAMES:
            await alice.send_raw(text.replace("BOB", users.bob))
        pong = await alice.ping()  # every bad frame was answered before this reply
        assert pong["op"] == "pong"
        assert [e["code"] for e in alice.errors] == [code for _, code in BAD_FRAMES]
        assert all(e["message"] for e in alice.errors)
        # the refs of requests are echoed in their errors
        with pytest.raises(ClientError) as refused:
            await alice.request({"op": "sync", "limit": 0})
        assert refused.value.code == "bad_frame"
    async with await Client.connect(stack.url(), stack.token(users.bob)) as bob:
        state = await bob.sync()
        assert state["messages"] == [] and state["conversations"] == []
    stack.assert_alive()


async def test_sending_into_a_foreign_conversation_is_forbidden(stack, users) -> None:
    foreign = direct_conversation(users.bob, users.carol)
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        for conversation in (foreign, "g:nosuchgroup"):
            with pytest.raises(ClientError) as refused:
                await alice.send({"conversation": conversation, "body": {"text": "let me in"}})
            assert refused.value.code == "forbidden"
    async with await Client.connect(stack.url(), stack.token(users.bob)) as bob:
        assert (await bob.history(foreign))["messages"] == []
        assert (await bob.sync())["messages"] == []


async def test_oversized_frame_closes_with_1009(stack, users) -> None:
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        await alice.send_raw(orjson.dumps({"op": "send", "cmid": "big", "to": users.bob, "body": {"text": "x" * 70_000}}).decode())
        await alice.websocket.wait_closed()
        assert alice.websocket.close_code == 1009
    async with await Client.connect(stack.url(), stack.token(users.bob)) as bob:
        assert (await bob.sync())["messages"] == []
    stack.assert_alive()
