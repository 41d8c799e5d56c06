"""What each client operation does, once the frame is parsed and the user known."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from imflow.core import message_types, groups
from imflow.core.storage import archive, archive_queue, fan_out, gateway_events, inbox, keys
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.ids import now_ms
from imflow.core.models import SendCommand, direct_conversation
from imflow.core.plugin_calls import await_me_maybe
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE
from imflow.core.plugin_types import OperationContext, OperationError, Rejection, plugin_error_code

from . import protocol

if TYPE_CHECKING:
    from .app import Backend
    from .extensions import Extensions
    from .hub import Connection


async def _require_member(backend: Backend, user: str, conversation: str) -> None:
    if not await groups.is_member(backend.redis, conversation, user):
        # non-members learn nothing about a conversation, not even that it exists
        raise ImflowError(ErrorCode.NOT_FOUND, f"no conversation {conversation!r} for you")


async def send(frame: protocol.Send, connection: Connection, backend: Backend, extensions: Extensions) -> None:
    user = connection.user
    conversation = direct_conversation(user, frame.to) if frame.to else frame.conversation
    assert conversation is not None  # the frame validator guarantees one of them
    if not await groups.is_member(backend.redis, conversation, user):
        raise ImflowError(ErrorCode.FORBIDDEN, f"you are not a member of {conversation!r}")
    message_type = extensions.message_types.get(frame.type)
    if message_type is None:
        known = ", ".join(sorted(extensions.message_types))
        raise ImflowError(ErrorCode.BAD_FRAME, f"unknown message type {frame.type!r}; known: {known}")
    body = message_types.validate_body(message_type, frame.body)
    command = SendCommand(
        sender=user,
        client_msg_id=frame.cmid,
        conversation=conversation,
        type=frame.type,
        body=body,
        sent_at_ms=now_ms(),
        gateway=backend.node_name,
        origin=connection.id,
    )
    verdict = await backend.hooks.first("imflow_before_send", command=command, gateway=extensions.gateway)
    if isinstance(verdict, Rejection):
        raise ImflowError(plugin_error_code(verdict.code), verdict.message, verdict.retry_after_ms)
    if isinstance(verdict, SendCommand):
        command = verdict
    try:
        durable = await backend.submit(command)
    except Exception as exc:
        raise ImflowError(ErrorCode.UNAVAILABLE, "could not queue the message; resend it with the same cmid") from exc
    # don't hold the connection's next frames for the broker's answer; report a failure later
    durable.add_done_callback(lambda done: _report_lost(done, connection, frame))
    return None  # the 'sent' frame follows once the ingest agent has stored the message


def _report_lost(done: asyncio.Future, connection: Connection, frame: protocol.Send) -> None:
    if not done.cancelled() and done.exception() is None:
        return
    error = ImflowError(ErrorCode.UNAVAILABLE, f"message {frame.cmid} was not queued; resend it with the same cmid")
    reply = protocol.error_frame(error, frame.ref)
    reply["cmid"] = frame.cmid
    connection.push(reply)


async def ack(frame: protocol.Ack, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    user = connection.user
    return {"op": "acked", "removed": await inbox.acknowledge(backend.redis, user, frame.mids)}


async def read(frame: protocol.Read, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    user = connection.user
    await _require_member(backend, user, frame.conversation)
    gid = groups.group_id(frame.conversation)
    if gid:  # a read fan-out group's count may wait for its flush: bring it up to date first
        await fan_out.catch_up(backend.redis, user, [gid])
    unread = await inbox.mark_read(backend.redis, user, frame.conversation, frame.seq)
    # the archive keeps read reports for analysts (read delays, unread backlogs)
    row = {"owner_uid": user, "conversation": frame.conversation, "read_seq": unread.read_seq, "at_ms": now_ms()}
    partition = archive_queue.partition_for(user, backend.settings.topic_partitions)
    await archive_queue.enqueue_rows(backend.redis, backend.settings.app_id, partition, archive.READ_EVENTS, [row])
    reply = {"op": "unread", **unread.to_dict()}
    # the reply answers this connection; the push is for the user's other connections only
    await gateway_events.to_user(backend.redis, user, reply, skip=getattr(connection, "id", ""))
    return reply


async def sync(frame: protocol.Sync, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    user = connection.user
    first_page = frame.before_mid is None
    # a sync flushes this user's read fan-out groups first, so its counts are exact now
    marks = await fan_out.catch_up(backend.redis, user) if first_page else {}
    messages, next_before, mids = await inbox.inbox_page(backend.redis, user, frame.before_mid, frame.limit)
    reply: dict[str, Any] = {"op": "sync", "messages": messages, "next_before_mid": next_before}
    if first_page:  # the first page also carries every conversation's state
        reply["conversations"], reply["total_unread"] = await inbox.conversation_states(backend.redis, user)
        # and the unread messages of read fan-out groups, which are in no inbox
        unread = await fan_out.unread_messages(
            backend.redis, user, marks, frame.limit, backend.settings.conversation_log_limit
        )
        if unread:
            page = dict(zip(mids, messages, strict=True))
            for entry in unread:  # a message in both (the group switched mode) is sent once
                page.setdefault(orjson.loads(entry)["mid"], orjson.Fragment(entry))
            reply["messages"] = [page[mid] for mid in sorted(page, reverse=True)]  # newest first
    return reply


async def history(frame: protocol.History, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    user = connection.user
    await _require_member(backend, user, frame.conversation)
    gid = groups.group_id(frame.conversation)
    # a group member sees what came after they joined, nothing before
    floor = await groups.joined_seq(backend.redis, gid, user) if gid else 0
    upper = f"({frame.before_seq}" if frame.before_seq is not None else "+inf"
    entries = await backend.redis.zrevrangebyscore(
        keys.conversation_log(frame.conversation), upper, f"({floor}", start=0, num=frame.limit
    )
    messages = [orjson.loads(entry) for entry in entries]
    # 'before_seq: 0' (or 1) asks for nothing; None for everything
    oldest = messages[-1]["seq"] if messages else (frame.before_seq if frame.before_seq is not None else 1 << 53)
    if len(messages) < frame.limit and oldest > floor + 1:
        # older than what Redis keeps: the archive's mailbox index, then the contents. Deleted
        # messages count towards the page there too: which ones are hidden is Redis's word, so
        # a page is the same before and after the archive has sealed a deletion
        older = await asyncio.to_thread(
            backend.archive.history_page, user, frame.conversation, oldest, frame.limit - len(messages), floor,
            include_deleted=True,
        )
        messages.extend(older)
    hidden = await inbox.deleted_among(backend.redis, user, [m["mid"] for m in messages])
    visible = [m for m in messages if m["mid"] not in hidden]
    last_seq = messages[-1]["seq"] if messages else None
    return {
        "op": "history",
        "conversation": frame.conversation,
        "messages": visible,
        "next_before_seq": last_seq if last_seq is not None and last_seq > floor + 1 else None,
    }


async def delete(frame: protocol.Delete, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    user = connection.user
    await _require_member(backend, user, frame.conversation)
    await inbox.delete_for_me(backend.redis, user, frame.mid)
    partition = archive_queue.partition_for(user, backend.settings.topic_partitions)
    await archive_queue.enqueue_deletion(backend.redis, backend.settings.app_id, partition, user, frame.mid, now_ms())
    return {"op": "deleted", "conversation": frame.conversation, "mid": frame.mid}


async def ping(frame: protocol.Ping, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    return {"op": "pong"}


# -- groups


async def _record(backend: Backend, gid: str, actor: str, kind: str, changes: dict[str, str]) -> None:
    s = backend.settings
    await groups.record(backend.redis, s.app_id, s.topic_partitions, gid, actor, kind, changes)


async def create_group(frame: protocol.CreateGroup, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    gid = uuid.uuid4().hex[:16]
    roles = await groups.create(backend.redis, gid, connection.user, frame.name, list(frame.members))
    await _record(backend, gid, connection.user, "joined", roles)
    return {"op": "group", "gid": gid, "conversation": f"g:{gid}", "name": frame.name, "members": roles}


async def add_members(frame: protocol.AddMembers, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    added = await groups.add(backend.redis, frame.gid, connection.user, list(frame.users))
    await _record(backend, frame.gid, connection.user, "joined", dict.fromkeys(added, groups.MEMBER))
    return {"op": "members_added", "gid": frame.gid, "added": added}


async def remove_member(frame: protocol.RemoveMember, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    await groups.remove(backend.redis, frame.gid, connection.user, frame.user)
    await _record(backend, frame.gid, connection.user, "removed", {frame.user: ""})
    return {"op": "member_removed", "gid": frame.gid, "user": frame.user}


async def leave_group(frame: protocol.LeaveGroup, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    await groups.leave(backend.redis, frame.gid, connection.user)
    await _record(backend, frame.gid, connection.user, "left", {connection.user: ""})
    return {"op": "left", "gid": frame.gid}


async def set_role(frame: protocol.SetRole, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    await groups.set_role(backend.redis, frame.gid, connection.user, frame.user, frame.role)
    await _record(backend, frame.gid, connection.user, "role", {frame.user: frame.role})
    return {"op": "role_set", "gid": frame.gid, "user": frame.user, "role": frame.role}


async def group_members(frame: protocol.GroupMembers, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    return {"op": "group_members", "gid": frame.gid, "members": await groups.members(backend.redis, frame.gid, connection.user)}


async def my_groups(frame: protocol.MyGroups, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any]:
    return {"op": "my_groups", "groups": await groups.groups_of(backend.redis, connection.user)}


HANDLERS = {
    protocol.CreateGroup: create_group,
    protocol.AddMembers: add_members,
    protocol.RemoveMember: remove_member,
    protocol.LeaveGroup: leave_group,
    protocol.SetRole: set_role,
    protocol.GroupMembers: group_members,
    protocol.MyGroups: my_groups,
    protocol.Send: send,
    protocol.Ack: ack,
    protocol.Read: read,
    protocol.Sync: sync,
    protocol.History: history,
    protocol.Delete: delete,
    protocol.Ping: ping,
}


async def plugin_call(frame: protocol.PluginCall, connection: Connection, backend: Backend, extensions: Extensions) -> dict[str, Any] | None:
    operation = extensions.operations[frame.op]

    async def push(user: str, pushed: dict[str, Any]) -> None:
        await gateway_events.to_user(backend.redis, user, pushed)

    context = OperationContext(
        connection.user, backend.node_name, backend.redis, backend.settings, push, backend.produce,
        connection=connection, gateway=extensions.gateway,
    )
    try:
        reply = await await_me_maybe(operation.handle(context, frame.fields))
    except OperationError as error:
        raise ImflowError(plugin_error_code(error.code), error.message, error.retry_after_ms) from error
    if reply is not None:
        reply.setdefault("op", frame.op)
    return reply


HANDLERS[protocol.PluginCall] = plugin_call


async def handle(
    frame: protocol.ClientFrame, connection: Connection, backend: Backend, extensions: Extensions
) -> dict[str, Any] | None:
    try:
        return await HANDLERS[type(frame)](frame, connection, backend, extensions)  # type: ignore[operator]
    except STORAGE_UNAVAILABLE as exc:
        # Redis away or still loading its AOF: a coded answer the client can act on, no traceback
        raise ImflowError(ErrorCode.UNAVAILABLE, "storage is unavailable; retry shortly (operations are idempotent)") from exc
