"""pytest fixtures for plugin authors (and imflow's own tests): an embedded imflow in the test.

Installed through the ``pytest11`` entry point, so a plugin's test suite only needs::

    async def test_my_plugin(imflow_server):
        async with imflow_server(plugins=[("my_plugin", my_plugin)]) as server:
            async with await server.client("alice") as alice:
                ...

The server is the real gateway and the real agents on the in-process transport and
fakeredis, run by uvicorn in the test's event loop. Accounts are open by default (any user a
token names is registered on first sign-in, and users without an account count as active), as
a plugin's tests talk to users they never registered; pass ``accounts="registered"`` to test
with registered accounts, and ``await server.register(user)`` to create one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from imflow.client import Client
from imflow.core import accounts, tokens
from imflow.core.settings import Settings
from imflow.gateway.app import create_gateway
from imflow.gateway.websocket_protocol import uvicorn_options
from imflow.node import Node
from imflow.plugin_manager import make_hooks
from imflow.testing import listening_socket


@dataclass
class EmbeddedServer:
    settings: Settings
    node: Node
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str, ttl: int = 3600) -> str:
        return tokens.issue(self.settings.secret_key.get_secret_value(), user, ttl)

    async def client(self, user: str) -> Client:
        return await Client.connect(self.url, self.token(user))

    async def register(self, user: str, **profile: Any) -> accounts.Profile:
        """Create ``user``'s account with these profile fields (``display_name``,
        ``avatar_url``, ``custom``), as the admin API would; raises ImflowError as it does."""
        fields = accounts.profile_fields(profile, self.settings.profile_custom_max_bytes)
        return await accounts.create(self.node.services, accounts.CreateAccount(user, fields))


@contextlib.asynccontextmanager
async def run_embedded(data_dir: Path, plugins: list[tuple[str, Any]] | None = None, **settings: Any) -> AsyncIterator[EmbeddedServer]:
    """An embedded imflow with these plugins (name, module or object) and settings overrides
    (accounts are open unless ``accounts="registered"`` is given)."""
    # the socket is bound here and handed to uvicorn: no other process can take the port meanwhile
    with contextlib.closing(listening_socket()) as sock:
        port = sock.getsockname()[1]
        config = Settings(
            kafka_url=None,
            redis_url=None,
            data_dir=data_dir,
            port=port,
            secret_key="test-secret-" + uuid.uuid4().hex,
            archive_flush_seconds=0.2,
            **{"accounts": "open", **settings},
        )
        node = Node(config, run_agents=True, hooks=make_hooks(config, extra=plugins or []))
        server = uvicorn.Server(
            uvicorn.Config(create_gateway(node), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(config.max_frame_bytes))
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:  # the condition, polled: start-up takes longer on a loaded machine
                if serving.done():
                    serving.result()  # start-up failed: raise its error
                await asyncio.sleep(0.02)
            yield EmbeddedServer(config, node, port)
        finally:
            server.should_exit = True
            await serving


@pytest.fixture
def imflow_server(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[EmbeddedServer]]:
    """A factory: ``async with imflow_server(plugins=[(name, plugin)], **settings) as server``."""
    count = iter(range(1_000_000))

    def start(plugins: list[tuple[str, Any]] | None = None, **settings: Any):
        return run_embedded(tmp_path / f"imflow-{next(count)}", plugins, **settings)

    return start
