"""Handlers of the presence operations (docs/protocol.md): frame -> command -> one service of core/."""

from __future__ import annotations
