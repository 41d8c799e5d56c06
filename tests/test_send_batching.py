"""The send checks and the throttling plugin's token takes, batched per event-loop tick
(core/storage/scripts.py ``TickBatch``): sends that arrive together get exactly the answers they would
get one at a time (a property test over random social graphs, accounts, privacy and limits),
leave the same marks and tokens behind, share a few pipelines, and fail alone or together the
way the single path did (a data error: that send; Redis away: the batch, never a hang; lost
scripts: loaded and each check run once)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as redis_errors

from imflow.core import contacts, message_types, sending
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import direct_conversation
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.plugin_types import GatewayContext, GatewayLoad
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import contacts as store
from imflow.core.storage import keys, redis_client
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE
from imflow.core.storage.scripts import load_scripts
from imflow.plugins.throttling import ThrottleSettings, Throttling, buckets

USERS = ("ann", "bob", "cal", "dee", "eve")
TYPES = {"text": message_types.TEXT}
CALM = GatewayLoad(connections=10, queued_frames=0, slow_connections=0, loop_lag_ms=1)
SLOW = 0.001  # tokens a second: no bucket refills noticeably while a test runs


@dataclass(frozen=True)
class World:
    """Accounts (status, dm, or None: no account), contact edges, blocks (blocker, blocked),
    first-message marks (writer, written to), limits, and the accounts setting."""

    accounts: dict[str, tuple[str, str] | None]
    edges: frozenset[tuple[str, str]]
    blocks: frozenset[tuple[str, str]]
    marks: frozenset[tuple[str, str]]
    user_burst: int
    connection_burst: int
    registered: bool


pairs = st.tuples(st.sampled_from(USERS), st.sampled_from(USERS)).filter(lambda p: p[0] != p[1])
account = st.none() | st.tuples(st.sampled_from(["active", "deactivated"]), st.sampled_from(["anyone", "contacts"]))
worlds = st.builds(
    World,
    accounts=st.fixed_dictionaries(dict.fromkeys(USERS, account)),
    edges=st.frozensets(pairs, max_size=6),
    blocks=st.frozensets(pairs, max_size=4),
    marks=st.frozensets(pairs, max_size=4),
    user_burst=st.integers(1, 4),
    connection_burst=st.integers(1, 3),
    registered=st.booleans(),
)
# (sender, recipient, connection), one send per two users: sends between the same two users
# take turns (core/sending.py), and a note to oneself skips the check, so in both cases the
# order in which a user's tokens go is no longer the list's (as with any concurrent sends);
# sends between the same users are checked below, on their own
send = st.tuples(pairs, st.sampled_from(["c1", "c2"])).map(lambda p: (*p[0], p[1]))
sends = st.lists(send, min_size=1, max_size=24, unique_by=lambda s: frozenset(s[:2]))


async def build(redis, world: World) -> tuple[Services, GatewayContext]:
    """An empty database holding ``world``, and a gateway's services with the throttling plugin."""
    await redis_client.flush(redis)
    for user, account in world.accounts.items():
        if account is not None:
            await redis.hset(keys.account(user), mapping={"status": account[0], "dm": account[1]})
    for a, b in world.edges:  # an edge is on both sides
        await redis.hset(keys.contacts(a), b, 1)
        await redis.hset(keys.contacts(b), a, 1)
    for blocker, blocked in world.blocks:
        await redis.hset(keys.blocked(blocker), blocked, 1)
    for writer, written in world.marks:
        await redis.sadd(keys.wrote_to(writer), written)
    limits = ThrottleSettings(
        _env_file=None, user_rate=SLOW, user_burst=world.user_burst, connection_rate=SLOW, connection_burst=world.connection_burst
    )
    manager = empty_manager()
    manager.register(Throttling(limits), "throttling")
    hooks = Hooks(manager)
    accounts = "registered" if world.registered else "open"
    services = Services(Settings(_env_file=None, topic_partitions=1, accounts=accounts), redis, node="gw-test", hooks=hooks)

    async def broadcast(topic: str, key: bytes, value: bytes) -> None:
        raise AssertionError("a send broadcasts nothing")

    return services, GatewayContext("gw-test", services.settings, redis, hooks, lambda: CALM, broadcast)


async def answer(services: Services, gateway: GatewayContext, n: int, send: tuple[str, str, str]) -> tuple:
    """("ok",) or (error code, retry_after_ms) for one send through the gateway's ``prepare``."""
    sender, recipient, connection = send
    draft = sending.Draft(sender, direct_conversation(sender, recipient), f"m{n}", "text", {"text": "hi"}, origin=connection)
    try:
        await sending.prepare(services, draft, TYPES, gateway)
    except ImflowError as exc:
        return (str(exc.code), exc.retry_after_ms)
    return ("ok",)


async def state(redis) -> dict:
    """The marks and the whole tokens left in each throttle bucket."""
    out: dict = {user: sorted(redis_client.text(m) for m in await redis.smembers(keys.wrote_to(user))) for user in USERS}
    for user in USERS:
        for bucket in ("send", "connection:c1", "connection:c2"):
            tokens = await redis.hget(f"im:throttle:{keys.user_tag(user)}:{bucket}", "tokens")
            out[f"{user} {bucket}"] = None if tokens is None else round(float(tokens))
    return out


def same(alone: list[tuple], together: list[tuple]) -> None:
    """The same answers, retry hints within the time the runs took apart (buckets refill slowly)."""
    assert [a[0] for a in alone] == [t[0] for t in together]
    for a, t in zip(alone, together, strict=True):
        if len(a) > 1 and a[1] is not None:
            assert t[1] is not None and abs(a[1] - t[1]) <= 5_000, (a, t)


async def alone_and_together(redis, world: World, batch: list[tuple[str, str, str]]) -> None:
    services, gateway = await build(redis, world)
    alone = [await answer(services, gateway, n, send) for n, send in enumerate(batch)]
    left_alone = await state(redis)
    services, gateway = await build(redis, world)
    together = await asyncio.gather(*(answer(services, gateway, n, send) for n, send in enumerate(batch)))
    same(alone, list(together))
    assert await state(redis) == left_alone


def run_on(url: str | None, world: World, batch: list[tuple[str, str, str]]) -> None:
    async def main() -> None:
        redis = redis_client.connect(url)
        try:
            await alone_and_together(redis, world, batch)
        finally:
            await redis.aclose()

    asyncio.run(main())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds, batch=sends)
def test_sends_together_get_the_answers_they_get_alone_on_fakeredis(world: World, batch) -> None:
    run_on(None, world, batch)


@pytest.mark.redis
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(world=worlds, batch=sends)
def test_sends_together_get_the_answers_they_get_alone_on_redis(redis_url: str, world: World, batch) -> None:
    run_on(redis_url, world, batch)


def check_alone_and_together(url: str | None, world: World, batch: list[tuple[str, str]]) -> None:
    """``contacts.check_direct`` (no plugins) for any sends, the same two users several times
    and both ways included: the same answers and marks as one at a time."""

    async def main() -> None:
        redis = redis_client.connect(url)
        try:
            outcomes = []
            for together in (False, True):
                services, _ = await build(redis, world)
                calls = [_verdict(contacts.check_direct(services, a, b)) for a, b in batch]
                got = await asyncio.gather(*calls) if together else [await call for call in calls]
                outcomes.append((got, await state(redis)))
            assert outcomes[0] == outcomes[1]
        finally:
            await redis.aclose()

    asyncio.run(main())


async def _verdict(call) -> str | bool:
    try:
        return await call
    except ImflowError as exc:
        return str(exc.code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds, batch=st.lists(pairs, min_size=1, max_size=24))
def test_checks_together_answer_as_alone_even_between_the_same_two_users(world: World, batch) -> None:
    check_alone_and_together(None, world, batch)


@pytest.mark.redis
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(world=worlds, batch=st.lists(pairs, min_size=1, max_size=24))
def test_checks_together_answer_as_alone_on_redis(redis_url: str, world: World, batch) -> None:
    check_alone_and_together(redis_url, world, batch)


async def test_sends_between_the_same_two_users_take_turns(any_redis) -> None:
    """ann writes to a contacts-only stranger from two devices at once, the first out of
    tokens: the first is refused and takes its mark back, the second goes and keeps one (as one
    after the other); and the stranger's reply in the same tick gets the answer it would get
    after both."""
    world = World({"ann": ("active", "contacts"), "bob": ("active", "anyone")}, frozenset(), frozenset(),
                  frozenset(), 5, 1, False)
    for together in (False, True):
        services, gateway = await build(any_redis, world)
        await answer(services, gateway, 99, ("ann", "ann", "c1"))  # c1 of ann's has no token left
        batch = [("ann", "bob", "c1"), ("ann", "bob", "c2"), ("bob", "ann", "c1")]
        calls = [answer(services, gateway, n, send) for n, send in enumerate(batch)]
        got = await asyncio.gather(*calls) if together else [await call for call in calls]
        assert [g[0] for g in got] == ["throttle.rate_limited", "ok", "ok"], (together, got)
        assert (await state(any_redis))["ann"] == ["bob"]


OPEN = World(dict.fromkeys(USERS, ("active", "anyone")), frozenset(), frozenset(), frozenset(), 50, 50, False)


async def test_many_users_at_once_share_a_few_pipelines(any_redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 senders at once, some blocked, some throttled, some to contacts-only strangers: every
    answer is its own, and the checks and takes went to Redis in a handful of pipelines."""
    users = [f"u{i}" for i in range(400)]
    world = World({u: ("active", "contacts" if i % 7 == 0 else "anyone") for i, u in enumerate(users)},
                  frozenset(), frozenset(), frozenset(), 1, 50, True)
    services, gateway = await build(any_redis, world)
    for i in range(0, 200, 5):  # the recipient blocks the sender
        await any_redis.hset(keys.blocked(users[200 + i]), users[i], 1)
    # sender i writes to 200 + i (no reverse pairs); senders 3, 13, ... send twice: their user
    # bucket holds one token; recipients 200 + 7k take messages from contacts only
    batch = [(users[i], users[200 + i], "c1") for i in range(200)] + [(users[i], users[200 + i], "c2") for i in range(3, 200, 10)]
    batch += [(users[0], "ghost", "c1")]  # no account, accounts=registered
    await load_scripts(any_redis)  # a fresh Redis would add a pipeline of retries to each batch
    runs: dict[str, list[int]] = {"checks": [], "takes": []}  # the sends of each pipeline

    def counted(what: str, run):
        async def counting(owner, items, *rest):
            runs[what].append(len(items))
            return await run(owner, items, *rest)

        return counting

    monkeypatch.setattr(store, "run_each", counted("checks", store.run_each))
    monkeypatch.setattr(buckets, "run_each", counted("takes", buckets.run_each))
    got = await asyncio.gather(*(answer(services, gateway, n, send) for n, send in enumerate(batch)))
    monkeypatch.undo()

    def refusal(i: int) -> str | None:  # sender i to 200 + i, as the recipient's side answers
        if i % 5 == 0:
            return "blocked"
        return "contacts_only" if (200 + i) % 7 == 0 else None

    codes = [g[0] for g in got]
    for n, (sender, _, _) in enumerate(batch[:-1]):
        i = int(sender[1:])
        # a second send: its user's one token went to the first (a refused first took none)
        want = refusal(i) or ("throttle.rate_limited" if n >= 200 and refusal(i) is None else "ok")
        assert codes[n] == want, (n, batch[n], got[n])
    assert codes[-1] == ErrorCode.NOT_FOUND
    assert "ok" in codes and "throttle.rate_limited" in codes and "blocked" in codes and "contacts_only" in codes
    # the first sends' checks in one pipeline, and the takes of those that passed in another;
    # the second sends wait for their firsts (sends between two users take turns)
    first, passed = 201, sum(code in ("ok", "throttle.rate_limited") for code in codes[:200])
    assert runs["checks"][0] == first and runs["takes"][0] == passed, runs
    assert len(runs["checks"]) + len(runs["takes"]) <= 30, runs


async def test_one_send_alone_goes_at_once(any_redis) -> None:
    """No timer: a lone send is answered within a few turns of the loop (a Redis reply away)."""
    services, gateway = await build(any_redis, OPEN)
    async with asyncio.timeout(5):
        assert await answer(services, gateway, 0, ("ann", "bob", "c1")) == ("ok",)


async def test_a_data_error_fails_that_send_alone(any_redis) -> None:
    """A key of the wrong type under one user fails that user's check, as it did alone; the
    other sends of its batch are answered."""
    services, gateway = await build(any_redis, OPEN)
    await any_redis.set(keys.blocked("cal"), "not a hash")
    with pytest.raises(redis_errors.ResponseError):
        await answer(services, gateway, 0, ("ann", "cal", "c1"))
    batch = [("ann", "bob", "c1"), ("dee", "cal", "c1"), ("eve", "bob", "c2")]
    together = await asyncio.gather(
        *(answer(services, gateway, n, send) for n, send in enumerate(batch)),
        return_exceptions=True,
    )
    assert together[0] == ("ok",) and together[2] == ("ok",)
    assert isinstance(together[1], redis_errors.ResponseError)


async def test_redis_away_fails_the_whole_batch_with_the_single_paths_error() -> None:
    """Every send of the batch fails with the error a lone send gets (storage unavailable),
    and none waits longer than the client's own timeout."""
    redis = redis_client.connect("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        services = Services(Settings(_env_file=None, topic_partitions=1, accounts="open"), redis, node="gw-test")
        async with asyncio.timeout(30):
            with pytest.raises(STORAGE_UNAVAILABLE):
                await answer(services, None, 0, ("ann", "bob", "c1"))  # type: ignore[arg-type]
            batch = [("ann", "bob", "c1"), ("cal", "dee", "c1"), ("eve", "ann", "c1")]
            together = await asyncio.gather(
                *(answer(services, None, n, send) for n, send in enumerate(batch)),  # type: ignore[arg-type]
                return_exceptions=True,
            )
        assert all(isinstance(outcome, STORAGE_UNAVAILABLE) for outcome in together), together
    finally:
        await redis.aclose()


async def test_lost_scripts_are_loaded_and_no_token_is_spent_twice(any_redis) -> None:
    """Redis forgot every script (a restart): the batch's checks and takes run once each."""
    world = World(dict.fromkeys(USERS, ("active", "anyone")), frozenset(), frozenset(), frozenset(), 3, 3, False)
    services, gateway = await build(any_redis, world)
    await answer(services, gateway, 0, ("ann", "bob", "c1"))  # the scripts are loaded now
    await any_redis.script_flush()
    together = await asyncio.gather(*(answer(services, gateway, n, (u, "ann", "c1")) for n, u in enumerate(USERS[1:], 1)))
    assert together == [("ok",)] * 4
    left = await state(any_redis)
    assert left["ann send"] == 2 and left["bob send"] == 2 and left["cal send"] == 2, left
    assert left["bob connection:c1"] == 2, left


async def test_a_cancelled_sender_leaves_the_others_answered(any_redis) -> None:
    services, gateway = await build(any_redis, OPEN)
    first = asyncio.ensure_future(answer(services, gateway, 0, ("ann", "bob", "c1")))
    rest = [asyncio.ensure_future(answer(services, gateway, n, (u, "bob", "c1"))) for n, u in enumerate(("cal", "dee"), 1)]
    await asyncio.sleep(0)  # all three are waiting for the batch now
    first.cancel()
    assert await asyncio.gather(*rest) == [("ok",), ("ok",)]
    with pytest.raises(asyncio.CancelledError):
        await first
