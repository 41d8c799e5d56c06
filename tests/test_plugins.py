"""The plugin platform: every hook, isolation of failing plugins, loading and disabling.

One inline plugin implements every hook; the tests drive it through a real embedded imflow
(the ``imflow_server`` fixture that plugin authors use too).
"""

from __future__ import annotations

import logging
from typing import Any

import fakeredis
import httpx
import orjson
import pluggy
import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import exceptions as redis_errors
from starlette.responses import JSONResponse
from starlette.routing import Route

from imflow.client import ClientError
from imflow.core.agents import AgentSpec, TimerSpec
from imflow.core.hookspecs import hookimpl
from imflow.core.models import SendCommand, direct_conversation
from imflow.core.plugin_types import (
    BroadcastStream,
    GatewayContext,
    GatewayLoad,
    MessageType,
    Operation,
    OperationError,
    Rejection,
)
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.plugin_manager import DEFAULT_PLUGINS, describe, make_hooks
from imflow.testing import eventually


def shout(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise ValueError("a shout needs text")
    return {"text": text.upper()}


class ShoutSettings(BaseSettings):
    """A plugin's declared settings (``imflow_settings``)."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_SHOUT_")
    volume: int = 11


class Everything:
    """Implements every hook and remembers what it saw."""

    def __init__(self) -> None:
        self.lifecycle: list[tuple[str, str, str]] = []  # (hook, node, role)
        self.configured: list[str] = []
        self.persisted: list[int] = []
        self.connected: list[str] = []
        self.disconnected: list[str] = []
        self.audited: list[bytes] = []
        self.ticks = 0
        self.policy_asked: list[tuple[str, int, str]] = []
        self.broadcasts: list[bytes] = []

    @hookimpl
    def imflow_configure(self, settings: Settings) -> None:
        self.configured.append(settings.app_id)

    @hookimpl
    def imflow_settings(self) -> BaseSettings:
        return ShoutSettings()

    @hookimpl
    async def imflow_startup(self, services: Services, role: str) -> None:
        self.lifecycle.append(("startup", services.node, role))

    @hookimpl
    def imflow_shutdown(self, services: Services, role: str) -> None:
        self.lifecycle.append(("shutdown", services.node, role))

    @hookimpl
    def imflow_message_types(self) -> list[MessageType]:
        return [MessageType("shout", shout)]

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        async def count(context, frame: dict) -> dict:
            if frame.get("fail"):
                raise OperationError("shout.refused", "asked to fail")
            await context.produce("shout.audit", context.user.encode(), orjson.dumps({"by": context.user}))
            await context.gateway.broadcast("shout.live", b"k", orjson.dumps({"by": context.user}))
            return {"persisted": len(self.persisted)}

        return [Operation("shout.count", count)]

    @hookimpl
    def imflow_http_routes(self) -> list[Route]:
        return [Route("/plugins/shout/hello", lambda request: JSONResponse({"hello": "shout"}))]

    @hookimpl
    def imflow_stream_agents(self) -> list[AgentSpec | TimerSpec]:
        async def audit(context, records) -> None:
            self.audited.extend(value for value, _ in records)

        async def tick(context) -> None:
            self.ticks += 1

        return [AgentSpec("shout.audit", "shout.audit", audit), TimerSpec("shout.tick", lambda s: 0.05, tick)]

    @hookimpl
    async def imflow_before_send(self, command: SendCommand) -> SendCommand | Rejection | None:
        text = command.body.get("text", "")
        if "forbidden" in text.lower():
            return Rejection("shout.forbidden", "that word is not allowed")
        if "darn" in text:
            return command.model_copy(update={"body": {"text": text.replace("darn", "d**n")}})
        return None

    @hookimpl
    def imflow_after_persist(self, messages) -> None:
        self.persisted.extend(m.mid for m in messages)

    @hookimpl
    async def imflow_fan_out_policy(self, conversation: str, members: int, sender: str) -> str | None:
        self.policy_asked.append((conversation, members, sender))
        return "read" if sender == "alice" else None  # alice is a celebrity: read fan-out for her

    @hookimpl
    def imflow_broadcast_streams(self) -> list[BroadcastStream]:
        async def heard(context: GatewayContext, values: list[bytes]) -> None:
            self.broadcasts.extend(values)

        return [BroadcastStream("shout.live", heard)]

    @hookimpl
    def imflow_admit_broadcast(self, stream: str, user: str) -> Rejection | None:
        return Rejection("shout.muted", "muted for a second", 1000) if user == "mallory" else None

    @hookimpl
    def imflow_shape_broadcast(self, stream: str, messages: list[dict]) -> list[dict]:
        return [{**message, "text": message["text"].upper()} for message in messages]

    @hookimpl
    def imflow_on_connect(self, user: str, node: str) -> None:
        self.connected.append(user)

    @hookimpl
    async def imflow_on_disconnect(self, user: str, node: str) -> None:
        self.disconnected.append(user)


HOT = GatewayLoad(connections=1, queued_frames=100_000, slow_connections=1, loop_lag_ms=900)


class Broken:
    """Fails in every hook it implements: imflow must carry on without it."""

    @hookimpl
    def imflow_before_send(self, command):
        raise RuntimeError("broken before_send")

    @hookimpl
    def imflow_after_persist(self, messages):
        raise RuntimeError("broken after_persist")

    @hookimpl
    def imflow_on_connect(self, user, node):
        raise RuntimeError("broken on_connect")

    @hookimpl
    def imflow_message_types(self):
        raise RuntimeError("broken message_types")

    @hookimpl
    def imflow_fan_out_policy(self, conversation, members, sender):
        raise RuntimeError("broken fan_out_policy")


async def test_every_hook_through_a_running_imflow(imflow_server) -> None:
    plugin = Everything()
    async with imflow_server(plugins=[("everything", plugin)]) as server:
        assert plugin.configured == [server.settings.app_id]  # imflow_configure
        node = server.settings.node_name
        assert plugin.lifecycle == [("startup", node, "serve")]  # imflow_startup, with this process's services
        assert dict(make_hooks(server.settings, extra=[("everything", plugin)]).call.settings())["everything"].volume == 11
        async with await server.client("alice") as alice, await server.client("bob") as bob:
            assert plugin.connected == ["alice", "bob"]  # imflow_on_connect
            # imflow_message_types: a new type, validated and normalised by the plugin
            sent = await alice.send({"to": "bob", "type": "shout", "body": {"text": "hello"}})
            push = await bob.next_message()
            assert push["message"]["type"] == "shout" and push["message"]["body"] == {"text": "HELLO"}
            with pytest.raises(ClientError) as bad:
                await alice.send({"to": "bob", "type": "shout", "body": {}})
            assert bad.value.code == "bad_frame" and "a shout needs text" in bad.value.frame["message"]
            with pytest.raises(ClientError) as unknown:
                await alice.send({"to": "bob", "type": "nosuch", "body": {}})
            assert unknown.value.code == "bad_frame"
            # imflow_before_send: reject with the plugin's code, or transform
            with pytest.raises(ClientError) as refused:
                await alice.send_text("bob", "a FORBIDDEN word")
            assert refused.value.code == "shout.forbidden"
            await alice.send_text("bob", "darn it")
            assert (await bob.next_message())["message"]["body"] == {"text": "d**n it"}
            # imflow_after_persist: called with the stored messages
            await eventually(lambda: _async(len(plugin.persisted) == 2))
            assert sent["mid"] in plugin.persisted
            # imflow_client_operations: a new op, its reply and its errors; it feeds the plugin's agent
            reply = await alice.request({"op": "shout.count"})
            assert (reply["op"], reply["persisted"]) == ("shout.count", 2)
            with pytest.raises(ClientError) as failed:
                await alice.request({"op": "shout.count", "fail": True})
            assert failed.value.code == "shout.refused"
            # imflow_stream_agents: the agent got the record, the timer ticks
            await eventually(lambda: _async(plugin.audited == [b'{"by":"alice"}']))
            # imflow_broadcast_streams: every gateway's handler hears the record
            await eventually(lambda: _async(plugin.broadcasts == [b'{"by":"alice"}']))
            # imflow_shape_broadcast and imflow_admit_broadcast, through the live rooms plugin
            await alice.request({"op": "room.join", "room": "stage"})
            await bob.request({"op": "room.join", "room": "stage"})
            await bob.request({"op": "room.post", "room": "stage", "text": "quiet words"})
            assert (await alice.next_message(op="room.batch"))["messages"][0]["text"] == "QUIET WORDS"
            async with await server.client("mallory") as mallory:
                await mallory.request({"op": "room.join", "room": "stage"})
                with pytest.raises(ClientError) as muted:
                    await mallory.request({"op": "room.post", "room": "stage", "text": "spam"})
                assert muted.value.code == "shout.muted" and muted.value.frame["retry_after_ms"] == 1000
            await eventually(lambda: _async(plugin.ticks >= 2))
            # imflow_fan_out_policy: alice's group messages go by read fan-out (no count in the
            # push, none in bob's inbox), bob's by the default, write fan-out, for 2 members
            group = (await alice.request({"op": "create_group", "name": "duo", "members": ["bob"]}))["conversation"]
            await alice.send({"conversation": group, "body": {"text": "from the star"}})
            by_read = await bob.next_message()
            await bob.send({"conversation": group, "body": {"text": "from a fan"}})
            by_write = await alice.next_message()
            assert by_read["message"]["sender"] == "alice" and "unread" not in by_read
            assert by_write["message"]["sender"] == "bob" and by_write["unread"]["count"] == 1
            assert sorted(set(plugin.policy_asked)) == [(group, 2, "alice"), (group, 2, "bob")]
        # imflow_on_disconnect
        await eventually(lambda: _async(sorted(plugin.disconnected) == ["alice", "bob", "mallory"]))
        # imflow_http_routes
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{server.http}/plugins/shout/hello")
        assert reply.json() == {"hello": "shout"}
    # imflow_shutdown, once the process stops
    assert plugin.lifecycle == [("startup", node, "serve"), ("shutdown", node, "serve")]


async def _async(value):
    return value


async def test_a_failing_plugin_is_isolated_and_named(imflow_server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    plugin = Everything()
    async with imflow_server(plugins=[("everything", plugin), ("broken", Broken())]) as server:
        async with await server.client("alice") as alice, await server.client("bob") as bob:
            await alice.send({"to": "bob", "type": "shout", "body": {"text": "still works"}})
            assert (await bob.next_message())["message"]["body"] == {"text": "STILL WORKS"}
            await eventually(lambda: _async(len(plugin.persisted) == 1))
            group = (await alice.request({"op": "create_group", "name": "duo", "members": ["bob"]}))["conversation"]
            await alice.send({"conversation": group, "body": {"text": "policy skipped, not stuck"}})
            assert "unread" not in await bob.next_message(), "the working plugin still chose read fan-out"
    logged = caplog.text
    for hook in ("imflow_before_send", "imflow_after_persist", "imflow_on_connect", "imflow_message_types", "imflow_fan_out_policy"):
        assert f"plugin broken failed in {hook}" in logged


def test_a_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def imflow_before_sned(self, command):
            return None

    with pytest.raises(pluggy.PluginValidationError):
        make_hooks(Settings(), extra=[("typo", Typo())])


def test_plugins_can_be_disabled_and_are_described() -> None:
    hooks = make_hooks(Settings(disabled_plugins="broken, other"), extra=[("everything", Everything()), ("broken", Broken())])
    rows = {row["name"]: row for row in describe(hooks)}
    assert sorted(rows) == sorted(["everything", *DEFAULT_PLUGINS])  # every built-in, and the one registered in code
    assert rows["red_packets"]["origin"] == "built-in"
    assert rows["everything"]["origin"] == "registered in code"
    assert "imflow_before_send" in rows["everything"]["hooks"] and "imflow_stream_agents" in rows["everything"]["hooks"]
    assert "red_packets" not in {row["name"] for row in describe(make_hooks(Settings(disabled_plugins="red_packets")))}


def _send(text: str = "hi") -> SendCommand:
    return SendCommand(sender="alice", conversation=direct_conversation("alice", "bob"), client_msg_id="c1", body={"text": text},
                       sent_at_ms=1)


class Recorder:
    """Remembers which of its hooks ran; answers before_send with ``answer`` (async)."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.ran: list[str] = []

    @hookimpl
    async def imflow_before_send(self, command: SendCommand) -> Any:
        self.ran.append("before_send")
        return self.answer


async def test_a_firstresult_hook_runs_nothing_after_the_first_answer() -> None:
    early, refusing, late = Recorder(), Recorder(Rejection("x.no", "no")), Recorder(Rejection("x.late", "late"))
    hooks = make_hooks(Settings(disabled_plugins="throttling,red_packets,live_rooms"),
                       extra=[("late", late), ("refusing", refusing), ("early", early)])  # last registered runs first
    verdict = await hooks.call.before_send(command=_send(), gateway=None)
    assert verdict == Rejection("x.no", "no")
    assert (early.ran, refusing.ran, late.ran) == (["before_send"], ["before_send"], []), "the late one never ran"


class Rewriter:
    """Answers before_send with the command it got, its text with ``mark`` added, after recording it."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.seen: list[str] = []

    @hookimpl
    def imflow_before_send(self, command: SendCommand) -> SendCommand:
        self.seen.append(command.body["text"])
        return command.model_copy(update={"body": {"text": command.body["text"] + self.mark}})


class Checker:
    """Refuses any text with ``word`` in it: a check a rewrite before it must not skip."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[str] = []

    @hookimpl
    async def imflow_before_send(self, command: SendCommand) -> Rejection | None:
        self.seen.append(command.body["text"])
        return Rejection("x.checked", "refused") if self.word in command.body["text"] else None


async def test_before_send_is_a_chain_each_plugin_sees_the_command_as_the_one_before_left_it() -> None:
    checker, first, second = Checker("bad"), Rewriter("+1"), Rewriter("+2")
    hooks = make_hooks(Settings(disabled_plugins=",".join(DEFAULT_PLUGINS)),
                       extra=[("checker", checker), ("second", second), ("first", first)])  # last registered runs first
    verdict = await hooks.call.before_send(command=_send("hi"), gateway=None)
    assert isinstance(verdict, SendCommand) and verdict.body == {"text": "hi+1+2"}
    assert (first.seen, second.seen, checker.seen) == (["hi"], ["hi+1"], ["hi+1+2"]), "each saw the rewritten command"
    # a rewrite before a check never skips it: the checker runs on what the rewriters left
    assert await hooks.call.before_send(command=_send("bad"), gateway=None) == Rejection("x.checked", "refused")
    assert checker.seen[-1] == "bad+1+2"
    # nobody changes it: None, as before
    quiet = make_hooks(Settings(disabled_plugins=",".join(DEFAULT_PLUGINS)), extra=[("checker", Checker("bad"))])
    assert await quiet.call.before_send(command=_send("fine"), gateway=None) is None


async def test_calls_go_through_pluggy_so_monitoring_and_wrappers_see_them() -> None:
    seen: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def imflow_before_send(self, command: SendCommand):
            seen.append("wrapper before")
            pending = yield  # the pending calls, in order: a wrapper may drop one
            seen.append("wrapper after")
            return [call for call in pending if call.plugin != "refusing"]

    refusing = Recorder(Rejection("x.no", "no"))
    hooks = make_hooks(Settings(disabled_plugins="throttling,red_packets,live_rooms"),
                       extra=[("refusing", refusing), ("wrapper", Wrapper())])
    undo = hooks.manager.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(f"call {name}"),
                                                 lambda outcome, name, impls, kwargs: seen.append(f"done {name}"))
    try:
        assert await hooks.call.before_send(command=_send(), gateway=None) is None, "the wrapper dropped the refusal"
    finally:
        undo()
    assert seen == ["call imflow_before_send", "wrapper before", "wrapper after", "done imflow_before_send"]
    assert refusing.ran == []


async def test_failures_are_isolated_and_outages_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        @hookimpl
        async def imflow_before_send(self, command: SendCommand) -> None:
            raise redis_errors.ConnectionError("connection refused")

    class AsyncRegistration:
        @hookimpl
        async def imflow_message_types(self) -> list[MessageType]:
            return [MessageType("never", shout)]

    caplog.set_level(logging.WARNING)
    answering = Recorder(Rejection("x.no", "no"))
    hooks = make_hooks(Settings(disabled_plugins=",".join(DEFAULT_PLUGINS)),
                       extra=[("answering", answering), ("down", Down()), ("broken", Broken()), ("async", AsyncRegistration())])
    assert await hooks.call.before_send(command=_send(), gateway=None) == Rejection("x.no", "no")
    assert [m.name for m in hooks.call.message_types()] == [], "broken and async registrations skipped"
    outage = next(r for r in caplog.records if "storage unavailable in imflow_before_send" in r.getMessage())
    assert outage.getMessage().startswith("plugin down:") and outage.exc_info is None
    failed = {r.getMessage(): r for r in caplog.records if "failed in" in r.getMessage()}
    assert failed["plugin broken failed in imflow_before_send; skipped"].exc_info is not None
    assert "plugin broken failed in imflow_message_types; skipped" in failed
    assert "plugin async failed in imflow_message_types; skipped" in failed


async def test_two_plugin_managers_share_no_plugin_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMFLOW_THROTTLE_USER_RATE", "3")
    monkeypatch.setenv("IMFLOW_RED_PACKETS_MAX_COUNT", "5")
    first = make_hooks(Settings())
    monkeypatch.setenv("IMFLOW_THROTTLE_USER_RATE", "7")
    monkeypatch.setenv("IMFLOW_RED_PACKETS_MAX_COUNT", "9")
    second = make_hooks(Settings())
    one, two = dict(first.plugins()), dict(second.plugins())
    for name in ("red_packets", "live_rooms", "throttling"):
        assert one[name] is not two[name], f"{name} is one object in two managers"
    assert (one["throttling"].settings.user_rate, two["throttling"].settings.user_rate) == (3, 7)
    # each manager's plugins answer with their own settings
    packet = _send().model_copy(update={"type": "red_packet", "body": {"total_cents": 100, "count": 7, "greeting": ""}})
    assert (await first.call.before_send(command=packet, gateway=None)).code == "red_packet.bad_amount"
    assert await second.call.before_send(command=packet, gateway=None) is None
    # the breaker and the per-viewer carry are per object
    one["throttling"].imflow_shape_broadcast("rooms", "r", [{"priority": 0}], HOT)
    assert one["throttling"].breaker.state == "open" and two["throttling"].breaker.state == "closed"
    assert dict(first.call.settings())["red_packets"].max_count == 5
    assert dict(second.call.settings())["red_packets"].max_count == 9


async def test_startup_and_shutdown_reach_every_plugin_with_the_services() -> None:
    class Lifecycle:
        def __init__(self) -> None:
            self.events: list[tuple[str, str, str]] = []

        @hookimpl
        async def imflow_startup(self, services: Services, role: str) -> None:
            self.events.append(("startup", services.node, role))

        @hookimpl
        def imflow_shutdown(self, services: Services, role: str) -> None:
            self.events.append(("shutdown", services.node, role))

    async def broadcast(topic: str, key: bytes, value: bytes) -> None:
        return None

    plugin = Lifecycle()
    hooks = make_hooks(Settings(), extra=[("lifecycle", plugin)])
    services = Services(settings=Settings(), redis=fakeredis.FakeAsyncRedis(), node="gw-1", hooks=hooks)
    await hooks.call.startup(services=services, role="gateway")
    # live rooms starts a batch flusher for a gateway's rooms; its shutdown hook stops it
    rooms = dict(hooks.plugins())["live_rooms"]
    gateway = rooms._gateway(GatewayContext("gw-1", services.settings, services.redis, hooks, lambda: HOT, broadcast))
    gateway.start()
    await hooks.call.shutdown(services=services, role="gateway")
    assert plugin.events == [("startup", "gw-1", "gateway"), ("shutdown", "gw-1", "gateway")]
    assert gateway.flusher is not None and gateway.flusher.done() and rooms.gateways == {}


class Amendments:
    """Implements ``imflow_message_amended`` (the recall_edit plugin's changes) and remembers them."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    async def imflow_message_amended(self, amendment: Any, services: Services) -> None:
        assert services.redis is not None
        self.seen.append(amendment)


async def test_message_amended_hears_each_recall_and_edit_once(imflow_server) -> None:
    plugin = Amendments()
    async with imflow_server(plugins=[("amendments", plugin)]) as server:
        async with await server.client("alice") as alice, await server.client("bob") as bob:
            conversation = direct_conversation("alice", "bob")
            sent = await alice.send_text("bob", "tpyo")
            for _ in range(2):  # the second edit to the same body is a resend: no change, no call
                await alice.request({"op": "message.edit", "conversation": conversation, "seq": sent["seq"], "body": {"text": "typo"}})
            for _ in range(2):  # so is a second recall
                await alice.request({"op": "message.recall", "conversation": conversation, "seq": sent["seq"]})
            with pytest.raises(ClientError):
                await bob.request({"op": "message.recall", "conversation": conversation, "seq": sent["seq"]})
    edit, recall = plugin.seen
    assert (edit.kind, edit.conversation, edit.seq, edit.mid, edit.by) == ("edit", conversation, 1, sent["mid"], "alice")
    assert edit.message["body"] == {"text": "typo"} and edit.message["version"] == 2 and edit.at_ms == edit.message["edited_at_ms"]
    assert (recall.kind, recall.by, recall.message["body"]) == ("recall", "alice", {})
    assert recall.at_ms == recall.message["recalled_at_ms"]


class OfflineAndGroups:
    """Implements ``imflow_offline_push`` and ``imflow_group_changed`` and remembers what they got."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, int, bool]] = []
        self.changes: list[tuple[str, dict[str, str], str]] = []

    @hookimpl
    async def imflow_offline_push(self, pushes: list[Any], context: Any) -> None:
        assert context.redis is not None
        self.pushes.extend((p.user, p.message.body["text"], p.total, p.mentions) for p in pushes)

    @hookimpl
    def imflow_group_changed(self, change: Any, services: Services) -> None:
        self.changes.append((change.kind, change.changes, change.actor))


async def test_offline_push_and_group_changed_through_a_running_imflow(imflow_server) -> None:
    plugin = OfflineAndGroups()
    async with imflow_server(plugins=[("watcher", plugin)]) as server:
        async with await server.client("alice") as alice:
            created = await alice.request({"op": "create_group", "name": "pair", "members": ["bob"]})
            await alice.send_text("bob", "you there?")  # bob has no connection: a push
            await alice.send({"conversation": created["conversation"], "body": {"text": "@bob", "mentions": ["bob"]}})
            async with await server.client("bob") as bob:
                await alice.send_text("bob", "now online")  # no push: bob is connected
                await bob.next_message()
                await bob.request({"op": "leave_group", "gid": created["gid"]})
            await eventually(lambda: _async(len(plugin.pushes) == 2))
    assert plugin.pushes == [("bob", "you there?", 1, False), ("bob", "@bob", 2, True)]
    assert plugin.changes == [("joined", {"bob": "member", "alice": "owner"}, "alice"), ("left", {"bob": ""}, "bob")]
