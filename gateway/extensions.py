"""What plugins add to a gateway: message types, client operations, HTTP routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imflow.core import message_types

from . import protocol

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from imflow.core.plugin_calls import Hooks
    from imflow.core.plugin_types import BroadcastStream, GatewayContext, MessageType, Operation

log = logging.getLogger(__name__)


@dataclass
class Extensions:
    """The message types (``text`` and the plugins'), plugin operations, routes and broadcast
    streams of one gateway, gathered once at start-up."""

    message_types: dict[str, MessageType] = field(default_factory=lambda: {"text": message_types.TEXT})
    operations: dict[str, Operation] = field(default_factory=dict)
    routes: list[BaseRoute] = field(default_factory=list)
    broadcast_streams: list[BroadcastStream] = field(default_factory=list)
    gateway: GatewayContext | None = None  # set once the gateway runs

    @classmethod
    def from_hooks(cls, hooks: Hooks) -> Extensions:
        """Gather what the plugins add; a duplicate type or an operation without a dot (or one
        that shadows a built-in) is logged and ignored."""
        extensions = cls()
        for message_type in hooks.call.message_types():
            if message_type.name in extensions.message_types:
                log.error("message type %r is registered twice; the second is ignored", message_type.name)
                continue
            extensions.message_types[message_type.name] = message_type
        for operation in hooks.call.client_operations():
            if "." not in operation.name or operation.name in protocol.OPS or operation.name in extensions.operations:
                log.error("operation %r must be new and contain a dot (plugin.verb); ignored", operation.name)
                continue
            extensions.operations[operation.name] = operation
        extensions.routes = hooks.call.http_routes()
        extensions.broadcast_streams = hooks.call.broadcast_streams()
        return extensions
