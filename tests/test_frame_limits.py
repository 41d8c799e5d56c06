"""Every frame and every message body is checked against one declaration before anything is
queued; what a worker cannot process anyway is set aside with a coded error, never in silence.

The classes (issue #12, items 1–4): bodies outside their type's schema, nesting past the depth
limit, numbers outside 0…2^53−1, bytes that are not UTF-8, and pushes outside their audience.
Each runs on both stacks; the body shapes are generated (hypothesis) and judged by a one-line
reference predicate.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
import websockets
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imflow.client import Client, ClientError
from imflow.core import wire
from imflow.core.message_types import MAX_TEXT
from imflow.core.models import MAX_SAFE_INT, direct_conversation
from imflow.testing import eventually


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


def text_body_is_valid(body: object) -> bool:
    """The reference: a text body is exactly {"text": 1–4000 characters}."""
    return (
        isinstance(body, dict) and set(body) == {"text"} and isinstance(body["text"], str) and 1 <= len(body["text"]) <= MAX_TEXT
    )


json_scalars = (
    st.none() | st.booleans() | st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
text_values = st.text(min_size=0, max_size=30) | st.integers(0, 3).map(lambda n: "x" * (MAX_TEXT - 1 + n))
bodies = (
    st.fixed_dictionaries({"text": text_values})
    | st.fixed_dictionaries({"text": text_values}, optional={"pad": json_values, "n": json_values, "": json_values})
    | st.fixed_dictionaries({"text": json_values})
    | json_values
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sent=st.lists(bodies, min_size=1, max_size=12))
async def test_text_bodies_outside_the_schema_are_refused_and_nothing_is_stored(stack, sent) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    conversation = direct_conversation(alice, bob)
    async with await Client.connect(stack.url(), stack.token(alice)) as client:
        accepted = []
        for body in sent:
            try:
                reply = await client.send({"to": bob, "body": body}, timeout=10, attempts=1)
            except ClientError as refused:
                assert refused.code == "bad_frame", (body, refused.frame)
                assert not text_body_is_valid(body), (body, refused.frame)
                continue
            assert text_body_is_valid(body), body
            accepted.append((reply["seq"], body))
        # seqs are gap-free: nothing refused took one
        assert [seq for seq, _ in accepted] == list(range(1, len(accepted) + 1))
        page = await client.history(conversation, limit=200)
        assert [(m["seq"], m["body"]) for m in reversed(page["messages"])] == accepted


@pytest.mark.parametrize("depth", [wire.MAX_DEPTH - 1, 220, 255, 900])
async def test_deep_nesting_is_refused_at_once(stack, users, depth) -> None:
    # written by hand: a JSON encoder would refuse to nest this deep itself
    deep = '{"x":' * depth + '"deep"' + "}" * depth
    frame = f'{{"op":"send","ref":"r{depth}","cmid":"deep-{depth}","to":"{users.bob}","body":{{"text":"hi","n":{deep}}}}}'
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        await alice.send_raw(frame)
        await alice.send_raw(frame)  # a resend gets the same answer, at once
        await alice.ping()  # both were answered before this reply
        assert [(e["code"], e.get("ref")) for e in alice.errors] == [("bad_frame", f"r{depth}")] * 2
        assert (await alice.history(direct_conversation(users.alice, users.bob)))["messages"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"text": "hi", "pad": "x" * 50_000},
        {"text": "hi", "n": 18446744073709551615},
        {"text": "hi", "n": -1},
        {"text": "hi", "n": 1.5},
        {"text": "x" * (MAX_TEXT + 1)},
        {"text": ""},
        {"words": "hi"},
    ],
    ids=["pad", "u64", "negative", "float", "too-long", "empty", "no-text"],
)
async def test_the_issue_examples_are_refused(stack, users, body) -> None:
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        with pytest.raises(ClientError) as refused:
            await alice.request({"op": "send", "cmid": "c1", "to": users.bob, "body": body})
        # the padded body fits in one 64 KiB frame: the schema refuses it, not the frame size
        assert refused.value.code == "bad_frame"
        assert (await alice.history(direct_conversation(users.alice, users.bob)))["messages"] == []


def plugin_body_cases(users) -> list[tuple[dict, str]]:
    return [
        ({"total_cents": 100, "count": 2, "greeting": "hi", "extra": 1}, "bad_frame"),
        ({"total_cents": -5, "count": 2}, "bad_frame"),
        ({"total_cents": 100, "count": 2, "greeting": nested(30)}, "bad_frame"),
    ]


async def test_plugin_message_types_obey_the_frame_limits(stack, users) -> None:
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        for body, code in plugin_body_cases(users):
            with pytest.raises(ClientError) as refused:
                await alice.request({"op": "send", "cmid": uuid.uuid4().hex, "to": users.bob, "type": "red_packet", "body": body})
            assert refused.value.code == code, body
        assert (await alice.history(direct_conversation(users.alice, users.bob)))["messages"] == []


BAD_UTF8 = [b"bad \xff\xfe bytes", b"overlong \xc0\xaf", b"cesu \xed\xa0\x80", b"cut \xc3"]


async def test_binary_frames_that_are_not_utf8_are_refused(stack, users) -> None:
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        for raw in BAD_UTF8:
            frame = b'{"op":"send","cmid":"u1","to":"' + users.bob.encode() + b'","body":{"text":"' + raw + b'"}}'
            await alice.send_raw(frame)
        await alice.send_raw(b'{"op":"ping","ref":"\xc3\x28"}')
        await alice.send_raw(b'{"op":"ping","ref":"\\ud800"}')  # an unpaired surrogate as an escape
        pong = await alice.ping()
        assert pong["op"] == "pong"
        assert [e["code"] for e in alice.errors] == ["bad_json"] * (len(BAD_UTF8) + 2)
        assert not any(push.get("op") == "pong" for push in list(alice.pushes._queue))  # type: ignore[attr-defined]
        assert (await alice.history(direct_conversation(users.alice, users.bob)))["messages"] == []
    stack.assert_alive()


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(stack, users) -> None:
    async with websockets.connect(stack.url()) as ws:
        await ws.send(orjson.dumps({"op": "auth", "token": stack.token(users.alice)}).decode())
        assert orjson.loads(await ws.recv())["op"] == "welcome"
        await ws.send(b'{"op":"ping","ref":"\xc3\x28"}', text=True)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
        assert ws.close_code == 1007  # RFC 6455 7.4.1: data inconsistent with the message type
    async with await Client.connect(stack.url(), stack.token(users.alice)) as alice:
        assert (await alice.ping())["op"] == "pong"
    stack.assert_alive()


async def test_a_read_reply_is_not_pushed_again_to_the_same_connection(stack, users) -> None:
    """docs/protocol.md: `unread` is the reply to `read`, pushed to the user's *other* connections."""
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await Client.connect(stack.url(0), stack.token(users.alice)) as alice,
        await Client.connect(stack.url(0), stack.token(users.bob)) as reader,
        await Client.connect(stack.url(0), stack.token(users.bob)) as same_gateway,
        await Client.connect(stack.url(1), stack.token(users.bob)) as other_gateway,
    ):
        sent = await alice.send_text(users.bob, "read me")
        for device in (reader, same_gateway, other_gateway):
            await device.next_message()
        reply = await reader.read(conversation, sent["seq"])
        assert reply["op"] == "unread" and reply["count"] == 0
        for device in (same_gateway, other_gateway):
            push = await device.next_message(op="unread")
            assert push["read_seq"] == sent["seq"]
        # the push for same_gateway was routed with the one for the reader (same gateway, same
        # event): once same_gateway has it, anything for the reader is queued before this pong
        await reader.ping()
        extra = [push for push in list(reader.pushes._queue) if push.get("op") == "unread"]  # type: ignore[attr-defined]
        assert extra == []


@pytest.mark.parametrize("stack", ["real"], indirect=True)  # only Kafka takes records from outside
async def test_a_record_the_worker_cannot_process_goes_to_the_dead_letter_topic(stack, users, kafka_url) -> None:
    """A record that bypassed a gateway (another producer, an old gateway) gets the sender a
    `rejected` error with its cmid, once, even when the record is delivered again. The in-process
    transport runs the same agent code: tests/test_dead_letter.py."""
    async with websockets.connect(stack.url(0)) as probe:  # the gateway's name, from its welcome
        await probe.send(orjson.dumps({"op": "auth", "token": stack.token(users.carol)}).decode())
        node = orjson.loads(await probe.recv())["node"]
    async with await Client.connect(stack.url(0), stack.token(users.alice)) as alice:
        record = {
            "sender": users.alice, "client_msg_id": "poison-1", "conversation": direct_conversation(users.alice, users.bob),
            "type": "text", "body": {"text": "hi", "n": nested(220)}, "sent_at_ms": 1, "gateway": node, "origin": "",
        }
        producer = AIOKafkaProducer(bootstrap_servers=kafka_url.split("://", 1)[1])
        await producer.start()
        try:
            for _ in range(2):  # delivered twice: set aside once
                await producer.send_and_wait(f"{stack.env['IMFLOW_APP_ID']}.ingest", orjson.dumps(record), key=b"k")
        finally:
            await producer.stop()
        await eventually(lambda: _async(bool(alice.errors)), timeout=30)
        assert alice.errors[0]["code"] == "rejected" and alice.errors[0]["cmid"] == "poison-1"
        await alice.ping()
        assert len(alice.errors) == 1
        assert (await alice.history(record["conversation"]))["messages"] == []
    stack.assert_alive()


async def _async(value):
    return value


@given(st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2), max_leaves=40))
def test_wire_check_matches_its_definition(value) -> None:
    def depth(item: object) -> int:
        if isinstance(item, dict):
            return 1 + max((depth(v) for v in item.values()), default=0)
        if isinstance(item, list):
            return 1 + max((depth(v) for v in item), default=0)
        return 0

    def numbers_ok(item: object) -> bool:
        if isinstance(item, dict):
            return all(numbers_ok(v) for v in item.values())
        if isinstance(item, list):
            return all(numbers_ok(v) for v in item)
        if isinstance(item, bool) or item is None or isinstance(item, str):
            return True
        return isinstance(item, int) and 0 <= item <= MAX_SAFE_INT

    framed = {"op": "x", "v": value}
    expected = depth(framed) <= wire.MAX_DEPTH and numbers_ok(framed)
    try:
        wire.check(framed)
    except Exception as exc:
        assert not expected and getattr(exc, "code", None) == "bad_frame"
    else:
        assert expected
    deep = {"op": "x", "v": nested(wire.MAX_DEPTH)}
    with pytest.raises(Exception):
        wire.check(deep)
    wire.check({"op": "x", "v": nested(wire.MAX_DEPTH - 2)})


def test_wire_decode_refuses_what_is_not_utf8() -> None:
    for raw in BAD_UTF8:
        with pytest.raises(Exception) as refused:
            wire.decode(b'{"t":"' + raw + b'"}')
        assert refused.value.code == "bad_json"  # type: ignore[attr-defined]
    with pytest.raises(Exception):
        wire.decode('{"t":"\ud800"}')
    assert wire.decode('{"t":"\\ud83d\\ude00"}') == {"t": "\U0001f600"}


def test_a_plugin_schema_takes_what_json_can_say() -> None:
    """Strict schemas are checked in JSON mode: enum values, arrays for tuples; the stored body
    is plain JSON again."""
    import enum

    from imflow.core.errors import ImflowError
    from imflow.core.message_types import validate_body
    from imflow.core.plugin_types import MessageBody, MessageType

    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    class Sticker(MessageBody):
        mood: Mood
        size: tuple[int, int]

    sticker = MessageType("sticker", schema=Sticker)
    assert validate_body(sticker, {"mood": "happy", "size": [64, 64]}) == {"mood": "happy", "size": [64, 64]}
    for bad in ({"mood": "angry", "size": [1, 1]}, {"mood": "sad", "size": [1]}, {"mood": "sad", "size": [1, 1], "x": 1}):
        with pytest.raises(ImflowError) as refused:
            validate_body(sticker, bad)
        assert refused.value.code == "bad_frame"
