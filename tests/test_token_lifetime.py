"""A token's lifetime holds on an open socket: the session ends at the token's expiry unless the
client re-authenticated on the same socket, and ``imflow revoke`` ends a user's sessions on
every gateway and refuses the old tokens from then on (WebSocket and HTTP). On both stacks."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import httpx
import jwt
import orjson
import pytest
import websockets

from imflow.client import Client, ClientError
from imflow.core import revocation, tokens
from imflow.core.storage import keys
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.ids import now_ms
from imflow.core.models import direct_conversation
from imflow.core.revocation import Revocation
from imflow.gateway.hub import CLOSE_UNAUTHENTICATED, Connection, Hub
from imflow.testing import eventually
from test_browser import Page, _launch, chromium  # noqa: F401 - chromium is a fixture

SECRET = "k" * 40
# short development tokens, for the browser client's renewal; the other tests issue their own
STACK_EXTRA_ENV = {"IMFLOW_TOKEN_TTL_SECONDS": "4", "IMFLOW_DEV_LOGIN": "true"}


async def connect(stack, user: str, gateway: int = 0, ttl: int = 3600) -> Client:
    return await Client.connect(stack.url(gateway), stack.token(user, ttl))


async def ended(client: Client, code: str, timeout: float = 10.0) -> None:
    """Wait until the server has ended the session with this error code and close 4401."""
    async def closed() -> bool:
        return client.closed

    await eventually(closed, timeout=timeout, interval=0.05)
    assert client.websocket.close_code == CLOSE_UNAUTHENTICATED, client.websocket.close_code
    assert [error["code"] for error in client.errors] == [code], client.errors


async def revoke(stack, user: str) -> None:
    """``imflow revoke USER``: through Redis on the real stack, through the server on the embedded one."""
    via = [] if stack.kind == "real" else ["--server", stack.http(0)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imflow", "revoke", user, *via,
        env={**os.environ, **stack.env}, cwd=stack.folder,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()
    assert f"revoked the tokens of {user}" in output.decode()


async def my_groups(stack, token: str, gateway: int = 0) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.http(gateway)) as http:
        return await http.get("/api/groups", headers={"Authorization": f"Bearer {token}"})


# -- expiry


async def test_session_ends_at_token_expiry_and_no_frame_after_it_is_served(stack, users) -> None:
    token = stack.token(users.alice, 2)  # exp is whole seconds: 1 to 2 s from now
    expires_ms = tokens.verify_claims(stack.env["IMFLOW_SECRET_KEY"], token).expires_ms
    async with await connect(stack, users.bob, gateway=1) as bob:
        # a raw socket that keeps sending until the server ends it: nothing sent after the
        # expiry may be stored, whichever of the timer and the frame comes first
        async with websockets.connect(stack.url(0), compression=None) as raw:
            await raw.send(orjson.dumps({"op": "auth", "token": token}).decode())
            welcome = orjson.loads(await raw.recv())
            assert welcome["op"] == "welcome" and welcome["expires_at_ms"] == expires_ms
            assert 0 < welcome["expires_in_ms"] <= 2000
            frames: list[dict] = []

            async def keep_sending() -> None:
                for i in range(10_000):
                    frame = {"op": "send", "cmid": f"c{i}", "to": users.bob, "body": {"text": f"m{i}"}}
                    await raw.send(orjson.dumps(frame).decode())
                    await asyncio.sleep(0.06)  # fewer than the 50 newest that Redis keeps per conversation

            sender = asyncio.create_task(keep_sending())
            try:
                while True:
                    frames.append(orjson.loads(await raw.recv()))
            except websockets.ConnectionClosed:
                pass
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            assert raw.close_code == CLOSE_UNAUTHENTICATED
        assert now_ms() >= expires_ms, "ended before its token expired"
        assert frames[-1]["op"] == "error" and frames[-1]["code"] == "token_expired"
        acked = {frame["cmid"] for frame in frames if frame["op"] == "sent"}

        async def stored() -> list[dict]:
            """The messages stored so far, once every acknowledged one is among them (those
            queued at the very end may be stored after the session ended, without a 'sent')."""
            page = await bob.history(direct_conversation(users.alice, users.bob), limit=200)
            found = page["messages"]
            return found if found and acked <= {message["client_msg_id"] for message in found} else []

        messages = await eventually(stored, timeout=15)  # the session served frames until its expiry
        assert all(message["sent_at_ms"] < expires_ms for message in messages), "a frame after the expiry was served"


async def test_a_client_cannot_send_after_expiry(stack, users) -> None:
    alice = await connect(stack, users.alice, ttl=4)  # a send's ACK comes through the broker in time
    async with alice, await connect(stack, users.bob, gateway=1) as bob:
        await alice.send_text(users.bob, "before")
        await ended(alice, "token_expired")
        assert now_ms() >= alice.expires_at_ms
        with pytest.raises(ConnectionError):
            await alice.send_text(users.bob, "after")
        # bob's longer token keeps his session
        assert (await bob.ping())["op"] == "pong"


async def test_reauthentication_replaces_the_expiry(stack, users) -> None:
    alice = await connect(stack, users.alice, ttl=2)
    async with alice:
        first_expiry = alice.expires_at_ms
        reply = await alice.reauth(stack.token(users.alice, 3600))
        assert reply["op"] == "reauthed" and reply["user"] == users.alice
        assert reply["expires_at_ms"] >= first_expiry + 3_000_000 and reply["expires_in_ms"] > 3_000_000
        # past the first token's expiry the session goes on
        async def past_first_expiry() -> bool:
            return now_ms() > first_expiry + 500

        await eventually(past_first_expiry, timeout=5)
        sent = await alice.send_text(users.bob, "still here")
        assert sent["seq"] >= 1 and not alice.closed and not alice.errors
        # a re-authentication may also shorten it: the new token is the session's token
        await alice.reauth(stack.token(users.alice, 2))
        await ended(alice, "token_expired")


async def test_refused_reauthentication_keeps_the_old_expiry(stack, users) -> None:
    alice = await connect(stack, users.alice, ttl=3)
    async with alice:
        secret = stack.env["IMFLOW_SECRET_KEY"]
        refused = {
            "forbidden": stack.token(users.bob, 3600),  # another user's token
            "token_expired": tokens.issue(secret, users.alice, 60, now_s=now_ms() // 1000 - 3600),
            "token_invalid": tokens.issue("x" * 40, users.alice, 3600),
        }
        for code, token in refused.items():
            with pytest.raises(ClientError) as error:
                await alice.reauth(token)
            assert error.value.code == code
            assert (await alice.ping())["op"] == "pong", "a refused re-authentication leaves the session open"
        await ended(alice, "token_expired")  # at the first token's expiry, as if nothing happened


# -- revocation


async def test_revoke_ends_sessions_on_every_gateway_and_refuses_old_tokens(stack, users) -> None:
    old = stack.token(users.alice)
    assert (await my_groups(stack, old)).status_code == 200
    phone = await Client.connect(stack.url(0), old)
    laptop = await Client.connect(stack.url(1), old)
    async with phone, laptop, await connect(stack, users.bob, gateway=1) as bob:
        await revoke(stack, users.alice)
        await ended(phone, "token_revoked", timeout=5)  # "within seconds"
        await ended(laptop, "token_revoked", timeout=5)
        # the old token is refused everywhere from now on
        for gateway in (0, 1):
            with pytest.raises(ClientError) as refused:
                await Client.connect(stack.url(gateway), old)
            assert refused.value.code == "token_revoked"
            reply = await my_groups(stack, old, gateway)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "token_revoked"
        # a token issued after the revocation works, even within the same second
        new = stack.token(users.alice)
        assert (await my_groups(stack, new)).status_code == 200
        async with await Client.connect(stack.url(1), new) as again:
            await again.send_text(users.bob, "signed in again")
            assert (await bob.next_message())["message"]["body"] == {"text": "signed in again"}
        # other users are untouched
        assert (await bob.ping())["op"] == "pong" and not bob.errors


async def test_a_revoked_token_cannot_renew_a_session(stack, users) -> None:
    old = stack.token(users.alice)
    async with await connect(stack, users.bob) as bob:
        await revoke(stack, users.alice)
        with pytest.raises(ClientError) as refused:
            await Client.connect(stack.url(0), old)
        assert refused.value.code == "token_revoked"
        # bob's session may not take alice's token, revoked or not
        with pytest.raises(ClientError) as forbidden:
            await bob.reauth(stack.token(users.alice))
        assert forbidden.value.code == "forbidden"
        async with await connect(stack, users.alice) as alice:
            with pytest.raises(ClientError) as stale:
                await alice.reauth(old)
            assert stale.value.code == "token_revoked"
            assert (await alice.ping())["op"] == "pong"


# -- the parts, without a stack


@pytest.fixture
async def redis():
    """fakeredis: the real Redis database of these tests holds the running real stack's state
    (the stack tests cover revocation on it end to end)."""
    from imflow.core.storage.redis_client import connect as connect_redis

    client = connect_redis(None)
    yield client
    await client.aclose()


def test_tokens_carry_their_issue_time_to_the_millisecond() -> None:
    before = now_ms()
    claims = tokens.verify_claims(SECRET, tokens.issue(SECRET, "alice", 60))
    assert before <= claims.issued_ms <= now_ms()
    assert claims.expires_ms == (claims.issued_ms // 1000 + 60) * 1000
    # another issuer's whole-second iat, and none at all, count as early as they can
    whole = jwt.encode({"sub": "alice", "iat": before // 1000, "exp": before // 1000 + 60}, SECRET, algorithm="HS256")
    assert tokens.verify_claims(SECRET, whole).issued_ms == before // 1000 * 1000
    bare = jwt.encode({"sub": "alice", "exp": before // 1000 + 60}, SECRET, algorithm="HS256")
    assert tokens.verify_claims(SECRET, bare).issued_ms == 0


@pytest.mark.parametrize("iat", [True, "1", -1, 1e12, None], ids=["bool", "string", "negative", "huge", "null"])
def test_a_token_with_a_bad_issue_time_is_invalid(iat: object) -> None:
    token = jwt.encode({"sub": "alice", "iat": iat, "exp": 4_000_000_000}, SECRET, algorithm="HS256")
    with pytest.raises(ImflowError) as refused:
        tokens.verify_claims(SECRET, token)
    assert refused.value.code == ErrorCode.TOKEN_INVALID


def test_a_token_issued_in_the_future_is_invalid_beyond_clock_skew() -> None:
    ahead = now_ms() / 1000 + tokens.ISSUED_AHEAD_MS / 1000
    assert tokens.verify_claims(SECRET, jwt.encode({"sub": "a", "iat": ahead - 5, "exp": 4_000_000_000}, SECRET, algorithm="HS256"))
    with pytest.raises(ImflowError):
        tokens.verify_claims(SECRET, jwt.encode({"sub": "a", "iat": ahead + 5, "exp": 4_000_000_000}, SECRET, algorithm="HS256"))


async def test_revocation_covers_tokens_issued_at_or_before_it_and_only_rises(redis) -> None:
    await revocation.revoke(redis, "alice", at_ms=2_000)
    await revocation.revoke(redis, "alice", at_ms=1_000)  # an older one changes nothing
    assert await revocation.revoked_before(redis, ["alice", "bob"]) == {"alice": 2_000}
    for issued_ms, refused in ((1_999, True), (2_000, True), (2_001, False)):
        claims = tokens.TokenClaims("alice", issued_ms, 4_000_000_000_000)
        if refused:
            with pytest.raises(ImflowError) as error:
                await revocation.check(redis, claims)
            assert error.value.code == "token_revoked"
        else:
            await revocation.check(redis, claims)
    await revocation.check(redis, tokens.TokenClaims("bob", 0, 4_000_000_000_000))
    with pytest.raises(ValueError):
        await revocation.revoke(redis, "not a user")


async def test_a_token_that_cannot_be_checked_is_not_accepted() -> None:
    from redis.asyncio import Redis

    from imflow.testing import free_port

    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with pytest.raises(ImflowError) as refused:
            await revocation.verify(down, SECRET, tokens.issue(SECRET, "alice", 60))
        assert refused.value.code == ErrorCode.UNAVAILABLE
    finally:
        await down.aclose()


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed_with: int | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code


def held(user: str, issued_ms: int) -> tuple[Connection, RecordingSocket]:
    socket = RecordingSocket()
    connection = Connection(socket, user, 100)  # type: ignore[arg-type]
    connection.authorize(tokens.TokenClaims(user, issued_ms, now_ms() + 3_600_000))
    connection.open()
    return connection, socket


async def test_a_gateway_ends_only_the_sessions_a_revocation_covers(redis) -> None:
    hub = Hub(redis, "gw-test")
    old, old_socket = held("alice", 1_000)
    new, _ = held("alice", 3_000)
    other, _ = held("bob", 1_000)
    for connection in (old, new, other):
        hub.add(connection)
    assert hub.revoke(Revocation("alice", 2_000)) == 1
    assert old.is_closed and not new.is_closed and not other.is_closed
    # a connection whose token was checked before the revocation came, and that joins after it
    late, late_socket = held("alice", 1_500)
    hub.add(late)
    assert late.is_closed
    for connection in (old, new, other, late):
        await connection.finish()
    for socket in (old_socket, late_socket):
        assert socket.closed_with == CLOSE_UNAUTHENTICATED
        assert socket.sent[-1]["code"] == "token_revoked"


async def test_a_gateway_rechecks_revocations_after_losing_its_channel(redis) -> None:
    """Pub/sub drops what is published while a gateway reconnects: it looks revocations up."""
    hub = Hub(redis, "gw-test")
    alice, socket = held("alice", 1_000)
    hub.add(alice)
    await redis.hset(keys.token_revocation("alice"), keys.REVOKED_MS, 2_000)  # its publish was missed
    await hub._recheck_revocations()
    assert alice.is_closed
    await alice.finish()
    assert socket.sent[-1]["code"] == "token_revoked"


# -- the browser client


def metric(stack, sample: str) -> float:
    """A sample's value on gateway 0's /metrics (0 when it has none yet)."""
    text = httpx.get(f"{stack.http(0)}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " "))


def test_the_browser_client_renews_its_token_on_the_open_socket(stack, users, chromium) -> None:
    """Development tokens live 4 s here: the page re-authenticates on its socket before each
    expires, and its session outlives several tokens without ending or reconnecting."""
    renewed = "imflow_reauthentications_total"
    expired = 'imflow_sessions_ended_total{code="token_expired"}'
    page = Page(_launch(chromium), users.alice)
    try:
        page.sign_in(stack.http(0), users.alice)
        start_renewed, start_expired = metric(stack, renewed), metric(stack, expired)
        first = page.js("return JSON.parse(sessionStorage.getItem('imflow.session')).token")
        deadline = time.monotonic() + 30
        while metric(stack, renewed) < start_renewed + 3:  # three renewals: seconds past the first token's expiry
            assert time.monotonic() < deadline, f"the page renewed {metric(stack, renewed) - start_renewed} time(s) in 30 s"
            assert page.connection() == "online", page.logs()
            time.sleep(0.2)
        assert metric(stack, expired) == start_expired, "a session ended at its token's expiry"
        assert page.connection() == "online"
        assert page.js("return JSON.parse(sessionStorage.getItem('imflow.session')).token") != first, "the fresh token is kept"
        assert not [line for line in page.logs() if "Uncaught" in line or "renew" in line]
    finally:
        page.driver.quit()
