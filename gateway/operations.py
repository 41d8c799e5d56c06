"""What each client operation does, once the frame is parsed and the user known: the frame
becomes a typed command, one service of core/ runs it, gateway/frames.py builds the reply.

The handler table is keyed by the frame classes of protocol.BUILT_IN (the registry); every
built-in operation but ``auth`` (the session's) has exactly one handler here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from imflow.core import conversations, groups, notifications, receipts, sending
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import direct_conversation
from imflow.core.plugin_calls import await_me_maybe
from imflow.core.plugin_types import OperationContext, OperationError, plugin_error_code
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE

from . import frames, protocol

if TYPE_CHECKING:
    import asyncio

    from imflow.core.services import Services

    from .app import Backend
    from .extensions import Extensions
    from .hub import Connection

F = TypeVar("F", bound=protocol.ClientFrame)
C = TypeVar("C")  # a service's command
Reply = dict[str, Any] | None
Handler = Callable[[Any, "Connection", "Backend", "Extensions"], Awaitable[Reply]]
HANDLERS: dict[type[protocol.ClientFrame], Handler] = {}


def handles(frame_class: type[F]) -> Callable[[Handler], Handler]:
    """Register the handler of one built-in frame class."""

    def register(handler: Handler) -> Handler:
        assert frame_class not in HANDLERS, f"two handlers for {frame_class.__name__}"
        HANDLERS[frame_class] = handler
        return handler

    return register


# -- sending


@handles(protocol.Send)
async def send(frame: protocol.Send, connection: Connection, backend: Backend, extensions: Extensions) -> None:
    user = connection.user
    conversation = direct_conversation(user, frame.to) if frame.to else frame.conversation
    assert conversation is not None  # the frame validator guarantees one of them
    draft = sending.Draft(user, conversation, frame.cmid, frame.type, frame.body, origin=connection.id)
    command = await sending.prepare(backend.services, draft, extensions.message_types, extensions.gateway)
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
    reply = frames.error(error, frame.ref)
    reply["cmid"] = frame.cmid
    connection.push(reply)


# -- conversations


@handles(protocol.Ping)
async def ping(frame: protocol.Ping, connection: Connection, backend: Backend, extensions: Extensions) -> Reply:
    return frames.pong()


# -- the operations that are one service call: frame -> command -> service -> reply frame


def serves(frame_class: type[F], service: Callable[[Services, C], Awaitable[Any]], command: Callable[..., C],
           *, origin: bool = False) -> None:
    """Register the handler of an operation that is one call of ``service`` with the command
    ``command(user, frame)`` builds, answered with the result's frame. ``origin``: the command
    is ``command(user, frame, connection id)`` (a change whose reply answers that connection,
    while the user's other connections are pushed it)."""

    async def handler(frame: F, connection: Connection, backend: Backend, extensions: Extensions) -> Reply:
        built = command(connection.user, frame, connection.id) if origin else command(connection.user, frame)
        return frames.reply(await service(backend.services, built))

    handles(frame_class)(handler)




serves(protocol.Read, conversations.read,
       lambda user, f, origin: conversations.Read(user, f.conversation, f.seq, origin=origin), origin=True)
serves(protocol.Ack, conversations.acknowledge, lambda user, f: conversations.Acknowledge(user, tuple(f.mids)))
serves(protocol.Sync, conversations.sync, lambda user, f: conversations.Sync(user, f.before_mid, f.limit))
serves(protocol.History, conversations.history,
        lambda user, f: conversations.History(user, f.conversation, f.before_seq, f.limit))
serves(protocol.Delete, conversations.delete, lambda user, f: conversations.Delete(user, f.conversation, f.mid))
serves(protocol.Receipts, receipts.receipts, lambda user, f: receipts.AskReceipts(user, f.conversation, tuple(f.seqs)))
serves(protocol.Readers, receipts.readers, lambda user, f: receipts.AskReaders(user, f.conversation, f.seq))
serves(protocol.CreateGroup, groups.create, lambda user, f: groups.CreateGroup(user, f.name, tuple(f.members)))
serves(protocol.AddMembers, groups.add, lambda user, f: groups.AddMembers(user, f.gid, tuple(f.users)))
serves(protocol.RemoveMember, groups.remove, lambda user, f: groups.RemoveMember(user, f.gid, f.user))
serves(protocol.LeaveGroup, groups.leave, lambda user, f: groups.LeaveGroup(user, f.gid))
serves(protocol.SetRole, groups.set_role, lambda user, f: groups.SetRole(user, f.gid, f.user, f.role))
serves(protocol.GroupMembers, groups.members, lambda user, f: groups.ListMembers(user, f.gid))
serves(protocol.MyGroups, groups.my_groups, lambda user, f: groups.ListGroups(user))


# -- plugins' operations


@handles(protocol.PluginCall)
async def plugin_call(frame: protocol.PluginCall, connection: Connection, backend: Backend, extensions: Extensions) -> Reply:
    operation = extensions.operations[frame.op]

    async def push(user: str, pushed: dict[str, Any]) -> None:
        await notifications.frame_to_user(backend.redis, user, pushed)

    context = OperationContext(
        connection.user, backend.node_name, backend.redis, backend.settings, push, backend.produce,
        connection=connection, gateway=extensions.gateway,
    )
    try:
        reply = await await_me_maybe(operation.handle(context, frame.fields))
    except OperationError as error:  # a plugin's refusal: its code is always ``plugin.reason``
        raise ImflowError(plugin_error_code(error.code), error.message, error.retry_after_ms) from error
    if reply is not None:
        reply.setdefault("op", frame.op)
    return reply


# each area's handlers (they register themselves with ``handles``/``serves`` on import);
# tests/test_services_registry.py checks that every built-in operation but 'auth' has one
from . import account_operations, contact_operations, presence_operations  # noqa: E402,F401


async def handle(frame: protocol.ClientFrame, connection: Connection, backend: Backend, extensions: Extensions) -> Reply:
    """The reply frame to one parsed frame (None: the reply comes later, as for ``send``);
    refusals raise ImflowError."""
    try:
        return await HANDLERS[type(frame)](frame, connection, backend, extensions)
    except STORAGE_UNAVAILABLE as exc:
        # Redis away or still loading its AOF: a coded answer the client can act on, no traceback
        raise ImflowError(ErrorCode.UNAVAILABLE, "storage is unavailable; retry shortly (operations are idempotent)") from exc
