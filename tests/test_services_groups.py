"""The groups service (core/groups.py) on fakeredis and the real redis-server, without a gateway:
roles, the one membership answer, the archive record inside each change, and the size cap
holding under concurrent adds."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from imflow.core import groups
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import keys
from imflow.core.storage.groups import EVENTS_TABLE

SETTINGS = Settings(topic_partitions=1, accounts="open")  # users here have no accounts


@pytest.fixture
def services(any_redis) -> Services:
    return Services(SETTINGS, any_redis, clock=lambda: 1234)


async def refused(call, code: ErrorCode) -> ImflowError:
    with pytest.raises(ImflowError) as error:
        await call
    assert error.value.code == code, error.value.message
    return error.value


async def recorded(services: Services) -> list[tuple[str, str, str, str]]:
    """(kind, user, role, actor) of every membership change queued for the archive, in order."""
    rows = []
    for raw in await services.redis.lrange(keys.archive_pending(SETTINGS.app_id, 0), 0, -1):
        record = orjson.loads(raw)
        if record.get("table") == EVENTS_TABLE:
            rows += [(row["kind"], row["user"], row["role"], row["actor"]) for row in record["rows"]]
    return rows


async def test_every_change_writes_its_own_archive_record(services: Services) -> None:
    created = await groups.create(services, groups.CreateGroup("ann", "team", ("ben", "cat"), gid="t1"))
    assert created == groups.GroupCreated("t1", "g:t1", "team", {"ben": "member", "cat": "member", "ann": "owner"})
    assert (await groups.add(services, groups.AddMembers("ann", "t1", ("dan", "ben")))).added == ["dan"]
    await groups.set_role(services, groups.SetRole("ann", "t1", "ben", "admin"))
    await groups.remove(services, groups.RemoveMember("ben", "t1", "dan"))
    await groups.leave(services, groups.LeaveGroup("cat", "t1"))
    assert await recorded(services) == [
        ("joined", "ben", "member", "ann"), ("joined", "cat", "member", "ann"), ("joined", "ann", "owner", "ann"),
        ("joined", "dan", "member", "ann"),
        ("role", "ben", "admin", "ann"),
        ("removed", "dan", "", "ben"),
        ("left", "cat", "", "cat"),
    ]
    members = await groups.members(services, groups.ListMembers("ann", "t1"))
    assert members.members == {"ann": "owner", "ben": "admin"}
    mine = await groups.my_groups(services, groups.ListGroups("ben"))
    assert mine.groups == [groups.GroupSummary("t1", "g:t1", "team", "admin")]


async def test_roles_decide_and_outsiders_learn_nothing(services: Services) -> None:
    await groups.create(services, groups.CreateGroup("own", "club", ("mia",), gid="c1"))
    await refused(groups.add(services, groups.AddMembers("mia", "c1", ("zed",))), ErrorCode.FORBIDDEN)
    await refused(groups.add(services, groups.AddMembers("eve", "c1", ("zed",))), ErrorCode.NOT_FOUND)
    await refused(groups.members(services, groups.ListMembers("eve", "c1")), ErrorCode.NOT_FOUND)
    await refused(groups.leave(services, groups.LeaveGroup("own", "c1")), ErrorCode.FORBIDDEN)
    await refused(groups.set_role(services, groups.SetRole("own", "c1", "own", "admin")), ErrorCode.BAD_FRAME)
    await refused(groups.remove(services, groups.RemoveMember("own", "c1", "zed")), ErrorCode.NOT_FOUND)
    await refused(groups.create(services, groups.CreateGroup("eve", "again", gid="c1")), ErrorCode.BAD_FRAME)
    await groups.set_role(services, groups.SetRole("own", "c1", "mia", "owner"))
    assert (await groups.members(services, groups.ListMembers("own", "c1"))).members == {"own": "admin", "mia": "owner"}
    assert await services.redis.hget(keys.group_info("c1"), "owner") == b"mia"
    assert await recorded(services) == [
        ("joined", "mia", "member", "own"), ("joined", "own", "owner", "own"), ("role", "mia", "owner", "own"),
    ], "refused changes record nothing"


async def test_one_membership_answer_for_every_read_and_forbidden_for_a_send(services: Services) -> None:
    await groups.create(services, groups.CreateGroup("ann", "g", ("ben",), gid="m1"))
    for conversation, user in (("g:m1", "eve"), ("p:ann:ben", "eve"), ("g:nothing", "ann")):
        await refused(groups.require_member(services, conversation, user), ErrorCode.NOT_FOUND)
        await refused(groups.require_member(services, conversation, user, to_send=True), ErrorCode.FORBIDDEN)
    for conversation, user in (("g:m1", "ben"), ("p:ann:ben", "ann"), ("p:ann:ben", "ben")):
        await groups.require_member(services, conversation, user)
    await groups.leave(services, groups.LeaveGroup("ben", "m1"))
    await refused(groups.require_member(services, "g:m1", "ben"), ErrorCode.NOT_FOUND)


async def test_the_size_cap_holds_however_many_adds_run_at_once(services: Services, monkeypatch) -> None:
    monkeypatch.setattr(groups, "MAX_MEMBERS", 5)
    await groups.create(services, groups.CreateGroup("boss", "capped", gid="cap"))
    adds = [groups.add(services, groups.AddMembers("boss", "cap", (f"u{i}",))) for i in range(12)]
    results = await asyncio.gather(*adds, return_exceptions=True)
    added = [r for r in results if isinstance(r, groups.MembersAdded)]
    refusals = [r for r in results if isinstance(r, ImflowError)]
    assert len(added) == 4 and len(refusals) == 8, results
    assert {r.code for r in refusals} == {ErrorCode.FORBIDDEN}
    assert await services.redis.hlen(keys.group_members("cap")) == 5
    assert len(await recorded(services)) == 5, "only the adds that happened are recorded"
