"""The stable API of imflow plugins: the one module a plugin imports from imflow.

What is named here keeps its name and meaning across imflow's releases (docs/plugins.md, "The
plugin API"); anything else in imflow may move. The built-in plugins (imflow/plugins/) import
only this module, and so should yours.
"""

from __future__ import annotations

from imflow.core.agents import AgentContext, AgentSpec, TimerSpec
from imflow.core.amending import Amended, Edit, Recall
from imflow.core.amending import edit as edit_message
from imflow.core.amending import recall as recall_message
from imflow.core.contacts import may_write
from imflow.core.ephemeral import push_to_online_members
from imflow.core.errors import ImflowError
from imflow.core.groups import is_member, may_see
from imflow.core.hookspecs import hookimpl
from imflow.core.ids import now_ms
from imflow.core.models import ConversationId, Message, SendCommand
from imflow.core.plugin_calls import Hooks
from imflow.core.plugin_types import (
    Amendment,
    BroadcastStream,
    GatewayContext,
    GatewayLoad,
    GroupChange,
    MessageBody,
    MessageType,
    OfflinePush,
    Operation,
    OperationContext,
    OperationError,
    Outbound,
    PreparedFrame,
    Priority,
    Rejection,
    plugin_error_code,
)
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage.archive_queue import enqueue_rows, partition_for
from imflow.core.storage.keys import user_tag
from imflow.core.storage.scripts import TickBatch, queue_script, run_each, run_pipeline, script
from imflow.core.storage.scripts import register as register_script

__all__ = [  # see docs/plugins.md, "The plugin API", for what each is
    "AgentContext",
    "AgentSpec",
    "Amended",
    "Amendment",
    "BroadcastStream",
    "ConversationId",
    "Edit",
    "GatewayContext",
    "GatewayLoad",
    "GroupChange",
    "Hooks",
    "ImflowError",
    "Message",
    "MessageBody",
    "MessageType",
    "OfflinePush",
    "Operation",
    "OperationContext",
    "OperationError",
    "Outbound",
    "PreparedFrame",
    "Priority",
    "Recall",
    "Rejection",
    "SendCommand",
    "Services",
    "Settings",
    "TickBatch",
    "TimerSpec",
    "edit_message",
    "enqueue_rows",
    "hookimpl",
    "is_member",
    "may_see",
    "may_write",
    "now_ms",
    "partition_for",
    "plugin_error_code",
    "push_to_online_members",
    "queue_script",
    "recall_message",
    "register_script",
    "run_each",
    "run_pipeline",
    "script",
    "user_tag",
]
