"""Handlers of the contact operations (docs/protocol.md): frame -> command -> one service of core/."""

from __future__ import annotations
