"""Accounts: the admin HTTP API (create, read, list, update, deactivate, reactivate, tokens),
sign-in through an account (registered and open), development sign-in, ``imflow users``, and
the client frames ``profiles`` and ``set_privacy``. The end-to-end tests run on both stacks,
with registered accounts; bad input gets a stable code and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from imflow.client import Client, ClientError
from imflow.core import accounts
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.settings import Settings
from imflow.core.ids import now_ms
from imflow.core.models import MAX_SAFE_INT
from imflow.core.storage import accounts as store
from imflow.testing import eventually

ADMIN_SECRET = "admin-" + uuid.uuid4().hex
STACK_EXTRA_ENV = {"IMFLOW_ACCOUNTS": "registered", "IMFLOW_ADMIN_SECRET": ADMIN_SECRET}
CUSTOM_MAX = 4096  # IMFLOW_PROFILE_CUSTOM_MAX_BYTES's default
CLOSE_UNAUTHENTICATED = 4401


# -- helpers


async def admin(stack: Any, method: str, path: str, body: Any = None, gateway: int = 0,
                secret: str | None = ADMIN_SECRET, **params: Any) -> httpx.Response:
    """One admin API call on a gateway of the stack (``secret`` None: no Authorization header)."""
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    async with httpx.AsyncClient(base_url=stack.http(gateway), timeout=10) as http:
        content = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else None
        return await http.request(method, path, content=content, headers=headers, params=params or None)


async def create(stack: Any, user: str, **profile: Any) -> dict[str, Any]:
    reply = await admin(stack, "POST", "/admin/users", {"user": user, **profile})
    assert reply.status_code == 201, reply.text
    return reply.json()


async def token_for(stack: Any, user: str, gateway: int = 0) -> str:
    reply = await admin(stack, "POST", f"/admin/users/{user}/tokens", {"ttl_seconds": 600}, gateway)
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


async def connect(stack: Any, user: str, gateway: int = 0) -> Client:
    return await Client.connect(stack.url(gateway), await token_for(stack, user))


def refused(reply: httpx.Response, status: int, code: str) -> None:
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text


async def sign_in_refused(stack: Any, token: str, gateway: int = 0) -> tuple[list[str], int | None]:
    """Open a socket with this token: the error codes received and the close code."""
    codes = []
    async with websockets.connect(stack.url(gateway)) as ws:
        await ws.send(orjson.dumps({"op": "auth", "token": token}).decode())
        try:
            async for data in ws:
                codes.append(orjson.loads(data).get("code"))
        except websockets.ConnectionClosed:
            pass
    return codes, ws.close_code


async def ended(client: Client, code: str) -> None:
    """The server ended the session with this error code and close 4401."""
    async def closed() -> bool:
        return client.closed

    await eventually(closed, timeout=10, interval=0.05)
    assert client.websocket.close_code == CLOSE_UNAUTHENTICATED
    assert [error["code"] for error in client.errors] == [code], client.errors


# -- the admin API, end to end


async def test_create_read_update_and_list(stack, users) -> None:
    created = await create(stack, users.alice, display_name="Alice", avatar_url="https://example.com/a.png",
                           custom={"team": "ops", "level": 3, "ratio": 0.5, "admin": False, "note": None})
    assert created["user"] == users.alice and created["status"] == "active"
    assert created["display_name"] == "Alice" and created["avatar_url"] == "https://example.com/a.png"
    assert created["custom"] == {"team": "ops", "level": 3, "ratio": 0.5, "admin": False, "note": None}
    assert created["created_at_ms"] == created["updated_at_ms"] > 0
    refused(await admin(stack, "POST", "/admin/users", {"user": users.alice, "display_name": "Other"}), 409, "conflict")
    # every gateway reads the same account
    assert (await admin(stack, "GET", f"/admin/users/{users.alice}", gateway=1)).json() == created
    refused(await admin(stack, "GET", f"/admin/users/{users.nobody}"), 404, "not_found")

    changed = (await admin(stack, "PATCH", f"/admin/users/{users.alice}", {"display_name": "Alice B.", "custom": {"x": 1}})).json()
    assert changed["display_name"] == "Alice B." and changed["custom"] == {"x": 1}  # custom replaced whole
    assert changed["avatar_url"] == created["avatar_url"] and changed["updated_at_ms"] >= created["updated_at_ms"]
    cleared = (await admin(stack, "PATCH", f"/admin/users/{users.alice}", {"avatar_url": None, "custom": None})).json()
    assert (cleared["avatar_url"], cleared["custom"], cleared["display_name"]) == (None, {}, "Alice B.")
    refused(await admin(stack, "PATCH", f"/admin/users/{users.nobody}", {"display_name": "x"}), 404, "not_found")
    bare = await create(stack, users.bob)
    assert (bare["display_name"], bare["avatar_url"], bare["custom"]) == (None, None, {})

    # listing: by user id, page after page
    await create(stack, users.carol)
    mine = sorted([users.alice, users.bob, users.carol])
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = (await admin(stack, "GET", "/admin/users", **params)).json()
        assert len(page["users"]) <= 2
        seen += [profile["user"] for profile in page["users"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert [user for user in seen if user in mine] == mine


BAD_PROFILES = [
    ({"display_name": 5}, "bad_frame"),
    ({"display_name": "x" * 101}, "bad_frame"),
    ({"display_name": "two\nlines"}, "bad_frame"),
    ({"avatar_url": "ftp://example.com/a.png"}, "bad_frame"),
    ({"avatar_url": "not a url"}, "bad_frame"),
    ({"avatar_url": "https://"}, "bad_frame"),
    ({"avatar_url": "https://example.com/" + "a" * 2048}, "bad_frame"),
    ({"avatar_url": ["https://example.com"]}, "bad_frame"),
    ({"custom": ["a"]}, "bad_frame"),
    ({"custom": "text"}, "bad_frame"),
    ({"custom": {"nested": {"a": 1}}}, "bad_frame"),
    ({"custom": {"list": [1]}}, "bad_frame"),
    ({"custom": {"huge": MAX_SAFE_INT + 1}}, "bad_frame"),
    ({"custom": {"big": "x" * CUSTOM_MAX}}, "frame_too_large"),
    ({"nickname": "al"}, "bad_frame"),
]
STATUS = {"bad_frame": 400, "frame_too_large": 413, "bad_json": 400}


@pytest.mark.parametrize(("fields", "code"), BAD_PROFILES, ids=[f"{next(iter(f))}-{i}" for i, (f, _) in enumerate(BAD_PROFILES)])
async def test_bad_profile_fields_are_refused_and_change_nothing(stack, users, fields, code) -> None:
    refused(await admin(stack, "POST", "/admin/users", {"user": users.alice, **fields}), STATUS[code], code)
    refused(await admin(stack, "GET", f"/admin/users/{users.alice}"), 404, "not_found")  # not created
    before = await create(stack, users.alice, display_name="Alice", custom={"a": 1})
    refused(await admin(stack, "PATCH", f"/admin/users/{users.alice}", fields), STATUS[code], code)
    assert (await admin(stack, "GET", f"/admin/users/{users.alice}")).json() == before


async def test_bad_requests_are_refused_and_change_nothing(stack, users) -> None:
    bad_calls: list[tuple[str, str, Any, dict[str, Any], str]] = [
        ("POST", "/admin/users", {"user": "not valid"}, {}, "bad_frame"),
        ("POST", "/admin/users", {"display_name": "no user"}, {}, "bad_frame"),
        ("POST", "/admin/users", b"{not json", {}, "bad_json"),
        ("POST", "/admin/users", [users.alice], {}, "bad_frame"),
        ("GET", "/admin/users/bad%20id", None, {}, "bad_frame"),
        ("PATCH", f"/admin/users/{users.alice}", {}, {}, "bad_frame"),  # nothing to change
        ("POST", f"/admin/users/{users.alice}/deactivate", {"why": "x"}, {}, "bad_frame"),
        ("POST", f"/admin/users/{users.alice}/tokens", {"ttl_seconds": 0}, {}, "bad_frame"),
        ("POST", f"/admin/users/{users.alice}/tokens", {"ttl_seconds": "60"}, {}, "bad_frame"),
        ("POST", f"/admin/users/{users.alice}/tokens", {"ttl_seconds": True}, {}, "bad_frame"),
        ("POST", f"/admin/users/{users.alice}/tokens", {"ttl": 60}, {}, "bad_frame"),
        ("GET", "/admin/users", None, {"limit": 0}, "bad_frame"),
        ("GET", "/admin/users", None, {"limit": "ten"}, "bad_frame"),
        ("GET", "/admin/users", None, {"limit": 1001}, "bad_frame"),
        ("GET", "/admin/users", None, {"after": "bad id"}, "bad_frame"),
        ("GET", "/admin/users", None, {"page": 2}, "bad_frame"),
    ]
    before = await create(stack, users.alice)
    for method, path, body, params, code in bad_calls:
        refused(await admin(stack, method, path, body, **params), STATUS[code], code)
    assert (await admin(stack, "GET", f"/admin/users/{users.alice}")).json() == before


async def test_the_admin_secret_is_required(stack, users) -> None:
    for secret in (None, "wrong", ADMIN_SECRET + "x", ADMIN_SECRET[:-1]):
        refused(await admin(stack, "POST", "/admin/users", {"user": users.alice}, secret=secret), 401, "unauthenticated")
        refused(await admin(stack, "GET", "/admin/users", secret=secret), 401, "unauthenticated")
        refused(await admin(stack, "POST", f"/admin/users/{users.alice}/tokens", {}, secret=secret), 401, "unauthenticated")
    async with httpx.AsyncClient(base_url=stack.http(0), timeout=10) as http:  # another scheme
        reply = await http.get("/admin/users", headers={"Authorization": f"Basic {ADMIN_SECRET}"})
        empty = await http.get("/admin/users", headers={"Authorization": "Bearer"})  # no token at all
    refused(reply, 401, "unauthenticated")
    refused(empty, 401, "unauthenticated")
    refused(await admin(stack, "GET", f"/admin/users/{users.alice}"), 404, "not_found")  # nothing was created


async def test_deactivation_ends_sessions_everywhere_and_refuses_tokens_and_messages(stack, users) -> None:
    await create(stack, users.alice)
    await create(stack, users.bob)
    old = await token_for(stack, users.alice)
    phone = await Client.connect(stack.url(0), old)
    laptop = await Client.connect(stack.url(1), old)
    async with phone, laptop, await connect(stack, users.bob, gateway=1) as bob:
        await bob.send_text(users.alice, "before")
        deactivated = await admin(stack, "POST", f"/admin/users/{users.alice}/deactivate", gateway=1)
        assert deactivated.status_code == 200 and deactivated.json()["status"] == "deactivated"
        # the sessions end on both gateways, through the revocation every gateway hears
        await ended(phone, "user_deactivated")
        await ended(laptop, "user_deactivated")
        refused(await admin(stack, "POST", f"/admin/users/{users.alice}/deactivate"), 409, "conflict")
        refused(await admin(stack, "POST", f"/admin/users/{users.alice}/tokens", {}), 403, "user_deactivated")
        # a token signed after the deactivation (the app's own issuer) is refused too
        for gateway in (0, 1):
            assert await sign_in_refused(stack, stack.token(users.alice), gateway) == (["user_deactivated"], CLOSE_UNAUTHENTICATED)
            async with httpx.AsyncClient(base_url=stack.http(gateway), timeout=10) as http:
                reply = await http.get("/api/groups", headers={"Authorization": f"Bearer {stack.token(users.alice)}"})
            refused(reply, 403, "user_deactivated")
        # messages to a deactivated user are refused (the send check reads the account)
        with pytest.raises(ClientError) as to_deactivated:
            await bob.send_text(users.alice, "are you there?")
        assert to_deactivated.value.code == "user_deactivated"
        assert (await bob.ping())["op"] == "pong"

        reactivated = await admin(stack, "POST", f"/admin/users/{users.alice}/reactivate")
        assert reactivated.status_code == 200 and reactivated.json()["status"] == "active"
        refused(await admin(stack, "POST", f"/admin/users/{users.alice}/reactivate"), 409, "conflict")
        # tokens from before the deactivation stay revoked; new ones work
        assert await sign_in_refused(stack, old) == (["token_revoked"], CLOSE_UNAUTHENTICATED)
        async with await connect(stack, users.alice, gateway=1) as again:
            await bob.send_text(users.alice, "welcome back")
            assert (await again.next_message())["message"]["body"] == {"text": "welcome back"}


async def test_tokens_only_for_active_accounts(stack, users) -> None:
    refused(await admin(stack, "POST", f"/admin/users/{users.ghost}/tokens", {}), 404, "not_found")
    # a validly signed token of a user without an account
    assert await sign_in_refused(stack, stack.token(users.ghost)) == (["unknown_user"], CLOSE_UNAUTHENTICATED)
    async with httpx.AsyncClient(base_url=stack.http(1), timeout=10) as http:
        reply = await http.get("/api/groups", headers={"Authorization": f"Bearer {stack.token(users.ghost)}"})
    refused(reply, 401, "unknown_user")
    await create(stack, users.alice)
    issued = await admin(stack, "POST", f"/admin/users/{users.alice}/tokens", {"ttl_seconds": 120})
    assert issued.status_code == 201 and issued.headers["cache-control"] == "no-store"
    body = issued.json()
    assert body["user"] == users.alice and abs(body["expires_at_ms"] - (now_ms() + 120_000)) < 30_000
    async with await Client.connect(stack.url(0), body["token"]) as alice:
        assert alice.expires_at_ms == body["expires_at_ms"]


async def test_profiles_frame(stack, users) -> None:
    await create(stack, users.alice, display_name="Alice")
    await create(stack, users.bob, display_name="Bob", avatar_url="http://example.com/b.png", custom={"city": "Oslo"})
    async with await connect(stack, users.alice) as alice:
        reply = await alice.request({"op": "profiles", "users": [users.bob, users.ghost, users.alice, users.bob]})
        assert reply["op"] == "profiles" and reply["unknown"] == [users.ghost]
        assert reply["profiles"] == [
            {"user": users.bob, "status": "active", "display_name": "Bob", "avatar_url": "http://example.com/b.png", "custom": {"city": "Oslo"}},
            # her own entry carries her privacy settings, which only she sees
            {"user": users.alice, "status": "active", "display_name": "Alice", "avatar_url": None, "custom": {},
             "dm": "anyone", "presence": "visible"},
        ]
        for bad in ({"users": []}, {"users": ["not valid"]}, {"users": [users.bob] * 101}, {}):
            with pytest.raises(ClientError) as refusal:
                await alice.request({"op": "profiles", **bad})
            assert refusal.value.code == "bad_frame"


async def test_set_privacy_is_pushed_to_the_other_devices(stack, users) -> None:
    await create(stack, users.alice)
    async with await connect(stack, users.alice, 0) as phone, await connect(stack, users.alice, 1) as laptop:
        reply = await phone.request({"op": "set_privacy", "dm": "contacts"})
        assert reply == {"op": "privacy", "dm": "contacts", "presence": "visible", "ref": reply["ref"]}
        assert await laptop.next_message(op="privacy") == {"op": "privacy", "dm": "contacts", "presence": "visible"}
        reply = await laptop.request({"op": "set_privacy", "presence": "hidden"})
        assert (reply["dm"], reply["presence"]) == ("contacts", "hidden")
        assert await phone.next_message(op="privacy") == {"op": "privacy", "dm": "contacts", "presence": "hidden"}
        # a device that comes later reads them in its own profile
        own = (await phone.request({"op": "profiles", "users": [users.alice]}))["profiles"][0]
        assert (own["dm"], own["presence"]) == ("contacts", "hidden")
        # the connection that asked is answered, not pushed as well
        await phone.ping()
        assert all(push["op"] != "privacy" for push in _drain(laptop))
        for bad in ({}, {"dm": "friends"}, {"presence": True}, {"dm": "anyone", "extra": 1}):
            with pytest.raises(ClientError) as refusal:
                await phone.request({"op": "set_privacy", **bad})
            assert refusal.value.code == "bad_frame"
        assert not laptop.errors and not phone.errors


def _drain(client: Client) -> list[dict[str, Any]]:
    frames = []
    while not client.pushes.empty():
        frames.append(client.pushes.get_nowait())
    return frames


# -- the embedded server in this process: open accounts, development sign-in, the API off


async def test_open_accounts_register_on_first_sign_in_once(imflow_server) -> None:
    from imflow.analytics import Archive

    async with imflow_server(admin_secret=ADMIN_SECRET) as server:  # the fixture's default: accounts=open
        # many first sign-ins of the same user at once: one account, created once
        clients = await asyncio.gather(*(server.client("newbie") for _ in range(8)))
        for client in clients:
            await client.close()
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
            profile = (await http.get("/admin/users/newbie", headers=headers)).json()
            assert profile["status"] == "active"
            # a user without an account counts as active: messages and profiles reach them
            async with await server.client("newbie") as newbie:
                await newbie.send_text("stranger", "hello")
                shown = await newbie.request({"op": "profiles", "users": ["stranger"]})
                assert shown["unknown"] == [] and shown["profiles"][0]["status"] == "active"
            # deactivated is refused in open mode too
            assert (await http.post("/admin/users/newbie/deactivate", headers=headers)).status_code == 200
        with pytest.raises(ClientError) as refusal:
            await server.client("newbie")
        assert refusal.value.code == "user_deactivated"

        async def recorded() -> list[tuple[str, str]] | None:
            with Archive(server.settings.archive_dir) as archive:
                if "im_account_events" not in archive.tables():
                    return None
                rows = archive.sql("SELECT user, kind FROM im_account_events WHERE user = 'newbie' ORDER BY at_ms").fetchall()
            return rows if len(rows) >= 2 else None

        rows = await eventually(recorded, timeout=10, interval=0.2)
        assert rows == [("newbie", "created"), ("newbie", "deactivated")]


async def test_development_sign_in_registers_and_refuses_deactivated(imflow_server) -> None:
    async with imflow_server(accounts="registered", admin_secret=ADMIN_SECRET) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
            assert (await http.get("/admin/users/dev", headers=headers)).status_code == 404
            token = (await http.post("/dev/token", json={"user": "dev"})).json()["token"]
            assert (await http.get("/admin/users/dev", headers=headers)).json()["status"] == "active"
            async with await Client.connect(server.url, token) as dev:
                assert (await dev.ping())["op"] == "pong"
            assert (await http.post("/dev/token", json={"user": "dev"})).status_code == 200  # again: the same account
            await http.post("/admin/users/dev/deactivate", headers=headers)
            reply = await http.post("/dev/token", json={"user": "dev"})
            assert (reply.status_code, reply.json()["error"]["code"]) == (403, "user_deactivated")
        # registered accounts: a token of a user without one is refused; registering lets them in
        with pytest.raises(ClientError) as refusal:
            await server.client("late")
        assert refusal.value.code == "unknown_user"
        await server.register("late", display_name="Late")
        async with await server.client("late") as late:
            assert (await late.request({"op": "profiles", "users": ["late"]}))["profiles"][0]["display_name"] == "Late"


async def test_the_admin_api_is_off_without_a_secret(imflow_server) -> None:
    async with imflow_server() as server, httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            reply = await http.post("/admin/users", json={"user": "x"}, headers=headers)
            assert (reply.status_code, reply.json()["error"]["code"]) == (403, "forbidden")


# -- storage: conditional writes and listing, on fakeredis and the real Redis


async def test_storage_creates_once_and_writes_only_as_expected(any_redis) -> None:
    outcomes = await asyncio.gather(*(store.create(any_redis, "ann", {"display_name": f"n{i}"}, 1000 + i) for i in range(10)))
    assert sorted(w.outcome for w in outcomes) == ["conflict"] * 9 + ["ok"]
    await store.set_last_seen(any_redis, "ghost", 5)  # presence writes on the hash of anyone
    assert await store.get(any_redis, "ghost") is None
    assert (await store.create(any_redis, "ghost", {}, 7)).outcome == "ok"
    assert (await store.get(any_redis, "ghost")).last_seen_ms == 5  # type: ignore[union-attr]
    assert (await store.write(any_redis, "nobody", "present", {"display_name": "x"})).outcome == "not_found"
    assert await store.get(any_redis, "nobody") is None
    conflict = await store.write(any_redis, "ann", "deactivated", {"status": "active"})
    assert conflict.outcome == "conflict" and conflict.account and conflict.account.status == "active"
    done = await store.write(any_redis, "ann", "active", {"status": "deactivated"}, ["display_name"])
    assert done.outcome == "ok" and done.account and (done.account.status, done.account.display_name) == ("deactivated", None)
    assert await store.statuses(any_redis, ["ann", "ghost", "nobody"]) == {"ann": "deactivated", "ghost": "active", "nobody": None}
    for name in ("b", "a", "c", "d"):
        await store.create(any_redis, name, {}, 1)
    first, after = await store.page(any_redis, None, 3)
    assert [a.user for a in first] == ["a", "ann", "b"] and after == "b"
    rest, end = await store.page(any_redis, after, 3)
    assert [a.user for a in rest] == ["c", "d", "ghost"] and end is None


# -- imflow users, on the real Redis


runner = CliRunner()


def test_imflow_users_commands(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from imflow.cli import cli

    monkeypatch.setenv("IMFLOW_REDIS_URL", redis_url)
    monkeypatch.setenv("IMFLOW_ACCOUNTS", "registered")
    secret = "k" * 40
    monkeypatch.setenv("IMFLOW_SECRET_KEY", secret)
    user = f"cli-{uuid.uuid4().hex[:8]}"

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return result.output

    assert "create the account first: imflow users create" in run("token", user, code=2)
    assert "not_found" in run("users", "token", user, code=2)
    created = orjson.loads(run("users", "create", user, "--display-name", "Cli", "--custom", '{"a": 1}'))
    assert (created["user"], created["status"], created["display_name"], created["custom"]) == (user, "active", "Cli", {"a": 1})
    assert "conflict" in run("users", "create", user, code=2)
    for bad in (["--custom", "[1]"], ["--custom", "{no json"], ["--avatar-url", "ftp://x"], ["--display-name", "x" * 101]):
        run("users", "update", user, *bad, code=2)
    assert orjson.loads(run("users", "show", user)) == created  # nothing changed
    updated = orjson.loads(run("users", "update", user, "--display-name", "", "--avatar-url", "https://example.com/c.png"))
    assert (updated["display_name"], updated["avatar_url"], updated["custom"]) == (None, "https://example.com/c.png", {"a": 1})
    listed = orjson.loads(run("users", "list", "--limit", "1000"))
    assert user in [profile["user"] for profile in listed["users"]]
    from imflow.core import tokens

    assert tokens.verify(secret, run("users", "token", user, "--ttl", "60").strip()) == user
    assert tokens.verify(secret, run("token", user).strip()) == user
    assert orjson.loads(run("users", "deactivate", user))["status"] == "deactivated"
    assert "conflict" in run("users", "deactivate", user, code=2)
    assert "user_deactivated" in run("users", "token", user, code=2)
    assert orjson.loads(run("users", "reactivate", user))["status"] == "active"
    assert "conflict" in run("users", "reactivate", user, code=2)
    assert "bad_frame" in run("users", "show", "not valid", code=2)


def test_imflow_users_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    from imflow.cli import cli

    monkeypatch.setenv("IMFLOW_REDIS_URL", "")
    result = runner.invoke(cli, ["users", "show", "alice"])
    assert result.exit_code == 2 and "IMFLOW_REDIS_URL" in result.output


# -- profile validation, as a property


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)


def _allowed_scalar(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INT
    return isinstance(value, float) and value == value and abs(value) != float("inf")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(display_name=st.none() | st.text(max_size=120) | st.integers(), custom=json_values, max_bytes=st.integers(1, 300))
def test_profile_validation_accepts_exactly_the_rules(display_name: Any, custom: Any, max_bytes: int) -> None:
    data = {"display_name": display_name, "custom": custom}
    name_ok = display_name is None or (isinstance(display_name, str) and len(display_name) <= 100
                                       and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in display_name))
    shape_ok = custom is None or (isinstance(custom, dict) and all(_allowed_scalar(v) for v in custom.values()))
    try:
        fields = accounts.profile_fields(data, max_bytes)
    except ImflowError as error:
        if not (name_ok and shape_ok):
            assert error.code == ErrorCode.BAD_FRAME
        else:
            assert error.code == ErrorCode.FRAME_TOO_LARGE and len(orjson.dumps(custom)) > max_bytes
        return
    assert name_ok and shape_ok
    changes, clear = fields.stored()
    if custom:
        assert len(changes["custom"].encode()) <= max_bytes and orjson.loads(changes["custom"]) == custom
    else:
        assert "custom" in clear  # null and {} clear the custom fields
    assert changes.get("display_name", "") == (display_name or "")


def test_an_empty_admin_secret_turns_the_admin_api_off_and_a_short_one_is_refused() -> None:
    """IMFLOW_ADMIN_SECRET= (empty) must never mean "the empty bearer token opens it"."""
    assert Settings(admin_secret="").admin_secret is None
    assert Settings(admin_secret="   ").admin_secret is None
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Settings(admin_secret="short")
