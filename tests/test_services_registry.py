"""One registry of built-in operations (gateway/protocol.py BUILT_IN): the parser, the handler
table, the HTTP routes, the reply frames and docs/protocol.md all agree with it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from imflow.core import accounts, contacts, conversation_settings, conversations, groups, presence, receipts
from imflow.core.storage import inbox
from imflow.gateway import frames, http_api, operations, protocol

ROOT = Path(__file__).parent.parent


def documented_ops() -> list[str]:
    """The first cell of every row of docs/protocol.md's request tables (``| op | fields | reply |``)."""
    ops, in_table = [], False
    for line in (ROOT / "docs" / "protocol.md").read_text().splitlines():
        if re.match(r"^\|\s*op\s*\|\s*fields\s*\|\s*reply\s*\|", line):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and (cell := re.match(r"^\|\s*`([a-z_]+)`\s*\|", line)):
            ops.append(cell.group(1))
    return ops


def test_docs_list_exactly_the_registrys_operations_once() -> None:
    documented = documented_ops()
    assert sorted(documented) == sorted(protocol.OPS), "docs/protocol.md's request tables and protocol.BUILT_IN differ"


def test_every_operation_parses_to_its_own_frame_class() -> None:
    assert len(set(protocol.OPS)) == len(protocol.OPS)
    for op, frame_class in protocol.FRAME_CLASSES.items():
        assert protocol.op_of(frame_class) == op


def test_every_operation_but_auth_has_one_handler_and_http_routes_name_built_in_ones() -> None:
    assert set(operations.HANDLERS) == (set(protocol.BUILT_IN) - {protocol.Auth}) | {protocol.PluginCall}
    for route in http_api.ROUTES:
        op = route.endpoint.__closure__ and next(
            cell.cell_contents for cell in route.endpoint.__closure__ if isinstance(cell.cell_contents, str)
        )
        assert op in protocol.OPS, route.path


def test_every_service_result_has_a_reply_frame() -> None:
    checked = 0
    # accounts' other services answer the admin API (gateway/admin_api.py), not a client frame
    client_facing = {accounts: {"profiles", "set_privacy"}}
    for module in (conversations, receipts, groups, contacts, conversation_settings, presence, accounts):
        for name, function in inspect.getmembers(module, inspect.iscoroutinefunction):
            parameters = list(inspect.signature(function).parameters)
            if name.startswith("_") or parameters[:1] != ["services"] or len(parameters) != 2:
                continue
            if module in client_facing and name not in client_facing[module]:
                continue
            annotation = function.__annotations__["return"]
            if annotation == "None":
                continue
            result = getattr(module, annotation, None) or getattr(inbox, annotation)  # read's Unread is storage's
            assert frames.reply.dispatch(result) is not frames.reply.dispatch(object), f"no frame for {module.__name__}.{name}"
            checked += 1
    # read, sync, history, delete, acknowledge, receipts, readers, the seven group operations, the
    # ten of contacts, set_conversation, watch_presence, profiles and set_privacy
    assert checked == 28
