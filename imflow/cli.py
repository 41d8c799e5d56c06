"""The ``imflow`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from imflow.archive_cli import archive_cli, simulate
from imflow.core.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from imflow.core.services import Services

cli = typer.Typer(help="imflow: instant messaging on Faust, Redis and DuckDB.", no_args_is_help=True, add_completion=False)

KafkaOpt = Annotated[str | None, typer.Option("--kafka", help="Kafka URL, e.g. kafka://127.0.0.1:19092 (default: IMFLOW_KAFKA_URL)")]
RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL, e.g. redis://127.0.0.1:16379/0 (default: IMFLOW_REDIS_URL)")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Listen address (default: IMFLOW_HOST)")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Listen port (default: IMFLOW_PORT)")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="Archive and state folder (default: IMFLOW_DATA_DIR)")]


def load_settings(**overrides: Any) -> Settings:
    """Settings from environment and .env, with the command line's options on top."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        typer.secho(f"invalid settings:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_gateway(settings: Settings, *, run_agents: bool) -> None:
    import uvicorn

    from imflow.gateway.app import create_gateway
    from imflow.gateway.websocket_protocol import uvicorn_options
    from imflow.node import Node

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_gateway(Node(settings, run_agents=run_agents))
    typer.secho(f"imflow is running: open http://{settings.host}:{settings.port}/  (Ctrl-C stops it)", fg="green", err=True)
    # uvicorn turns SIGTERM and SIGINT into a graceful shutdown: lifespan stops the node
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, loop="uvloop",
        **uvicorn_options(settings.max_frame_bytes),
        timeout_graceful_shutdown=10,  # then open WebSockets are closed; clients reconnect and sync
    )


@cli.command()
def serve(kafka: KafkaOpt = None, redis: RedisOpt = None, host: HostOpt = None, port: PortOpt = None, data_dir: DataOpt = None) -> None:
    """Run gateway and stream agents in one process; with no servers, everything is in-process."""
    settings = load_settings(kafka_url=kafka, redis_url=redis, host=host, port=port, data_dir=data_dir)
    setup_logging(settings)
    run_gateway(settings, run_agents=True)


@cli.command()
def gateway(kafka: KafkaOpt = None, redis: RedisOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Run one gateway (Starlette under uvicorn) for the production topology: needs Kafka and Redis."""
    settings = load_settings(kafka_url=kafka, redis_url=redis, host=host, port=port)
    _require_servers(settings)
    setup_logging(settings)
    run_gateway(settings, run_agents=False)


@cli.command()
def worker(kafka: KafkaOpt = None, redis: RedisOpt = None, data_dir: DataOpt = None) -> None:
    """Run one Faust worker of imflow.streams: needs Kafka and Redis. Start as many as you like."""
    import faust

    from imflow.plugin_manager import make_hooks
    from imflow.streams.app import create_app

    settings = load_settings(kafka_url=kafka, redis_url=redis, data_dir=data_dir)
    _require_servers(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # faust.Worker handles SIGTERM/SIGINT: it stops consuming, commits and closes cleanly
    faust.Worker(create_app(settings, hooks=make_hooks(settings)), loglevel=settings.log_level).execute_from_commandline()


@cli.command()
def token(
    user: Annotated[str, typer.Argument(help="The user id the token names")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds (default: IMFLOW_TOKEN_TTL_SECONDS)")] = None,
    redis: RedisOpt = None,
) -> None:
    """Print a signed client token for USER. With Redis (--redis or IMFLOW_REDIS_URL) only for an
    active account, as `imflow users token` (with IMFLOW_ACCOUNTS=registered: create it first
    with `imflow users create USER`); without, signed offline for the embedded server, which
    accepts it once USER has an account there (its development sign-in creates one)."""
    from imflow.core import tokens

    settings = load_settings(redis_url=redis)
    if settings.redis_url:
        typer.echo(_issue(settings, user, ttl))
        return
    try:
        typer.echo(tokens.issue(settings.secret_key.get_secret_value(), user, ttl or settings.token_ttl_seconds))
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc


@cli.command()
def revoke(
    user: Annotated[str, typer.Argument(help="The user whose tokens to revoke")],
    redis: RedisOpt = None,
    server: Annotated[str | None, typer.Option("--server", help="Ask this running server instead (POST /dev/revoke, where dev login is on), e.g. http://127.0.0.1:8080; the default without Redis")] = None,
) -> None:
    """Revoke USER's tokens issued until now: they are refused from now on (WebSocket and HTTP),
    and the sessions they opened end on every gateway within seconds (token_revoked, close
    4401). Tokens issued afterwards work."""
    import asyncio
    from datetime import UTC, datetime

    settings = load_settings(redis_url=redis)
    if settings.redis_url and not server:
        from imflow.core import revocation
        from imflow.core.storage.redis_client import connect

        async def run() -> int:
            client = connect(settings.redis_url)
            try:
                return (await revocation.revoke(client, user)).before_ms
            finally:
                await client.aclose()

        try:
            revoked_ms = asyncio.run(run())
        except ValueError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2) from exc
    else:  # the embedded server keeps its Redis in its own process: ask it
        import httpx

        url = (server or f"http://{settings.host}:{settings.port}").rstrip("/")
        try:
            reply = httpx.post(f"{url}/dev/revoke", json={"user": user}, timeout=10)
        except httpx.HTTPError as exc:
            typer.secho(f"{url} does not answer ({exc}); with real servers pass --redis or set IMFLOW_REDIS_URL", fg="red", err=True)
            raise typer.Exit(2) from exc
        if reply.status_code != 200:
            why = "it has no development sign-in (IMFLOW_DEV_LOGIN); revoke through its Redis with --redis" if reply.status_code in (404, 405) else reply.text
            typer.secho(f"{url} refused: {why}", fg="red", err=True)
            raise typer.Exit(2)
        revoked_ms = reply.json()["revoked_ms"]
    when = datetime.fromtimestamp(revoked_ms / 1000, UTC).isoformat(timespec="milliseconds")
    typer.echo(f"revoked the tokens of {user} issued until {when} (Unix ms {revoked_ms})")


# -- accounts: the admin API's operations from a shell (core/accounts.py on IMFLOW_REDIS_URL)

users_cli = typer.Typer(
    help="Manage accounts as the admin API does, on the real Redis (--redis or IMFLOW_REDIS_URL). "
    "Each command prints the account as JSON; a refusal exits with 2 and its code and message.",
    no_args_is_help=True,
)
cli.add_typer(users_cli, name="users")
UserArg = Annotated[str, typer.Argument(help="The user id")]
DisplayNameOpt = Annotated[str | None, typer.Option("--display-name", help="At most 100 characters; '' clears it")]
AvatarUrlOpt = Annotated[str | None, typer.Option("--avatar-url", help="An http(s) URL, at most 2048 characters; '' clears it")]
CustomOpt = Annotated[
    str | None,
    typer.Option("--custom", help="""Custom fields, a flat JSON object: '{"team": "ops", "level": 3}' (replaces them all)"""),
]
T = TypeVar("T")


def _on_accounts(settings: Settings, call: Callable[[Services], Awaitable[T]], not_found_hint: str = "") -> T:
    """Run one accounts service call on the Redis of ``settings``; a refusal exits with 2 (and
    ``not_found_hint`` after the message of a ``not_found``)."""
    import asyncio

    from imflow.core.errors import ImflowError
    from imflow.core.services import Services
    from imflow.core.storage.redis_client import connect

    if not settings.redis_url:
        typer.secho("accounts live in Redis: pass --redis or set IMFLOW_REDIS_URL "
                    "(the embedded server keeps its own in its process: use its /admin/users API)", fg="red", err=True)
        raise typer.Exit(2)

    async def run() -> T:
        client = connect(settings.redis_url)
        try:
            return await call(Services(settings=settings, redis=client, node=settings.node_name))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except ImflowError as error:
        hint = f" ({not_found_hint})" if not_found_hint and error.code == "not_found" else ""
        typer.secho(f"{error.code}: {error.message}{hint}", fg="red", err=True)
        raise typer.Exit(2) from error


def _profile_fields(settings: Settings, display_name: str | None, avatar_url: str | None, custom: str | None) -> Any:
    """The profile options as core/accounts.py's ProfileFields; bad ones exit with 2."""
    import orjson

    from imflow.core import accounts
    from imflow.core.errors import ImflowError

    given: dict[str, Any] = {"display_name": display_name, "avatar_url": avatar_url}
    try:
        if custom is not None:
            given["custom"] = orjson.loads(custom)
        return accounts.profile_fields({k: v for k, v in given.items() if v is not None}, settings.profile_custom_max_bytes)
    except orjson.JSONDecodeError as exc:
        typer.secho(f"bad_json: --custom is not JSON ({exc})", fg="red", err=True)
        raise typer.Exit(2) from exc
    except ImflowError as error:
        typer.secho(f"{error.code}: {error.message}", fg="red", err=True)
        raise typer.Exit(2) from error


def _print_json(value: Any) -> None:
    import orjson

    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _print_profile(settings: Settings, call: Callable[[Services], Awaitable[Any]]) -> None:
    """Run one accounts call and print the profile it answers as JSON."""
    _print_json(_on_accounts(settings, call).to_dict())


def _profile_change(service: Any, command: Any, user: str, display_name: str | None, avatar_url: str | None,
                    custom: str | None, redis: str | None) -> None:
    """Create or update (``service`` with its ``command`` type) an account with the profile options."""

    settings = load_settings(redis_url=redis)
    fields = _profile_fields(settings, display_name, avatar_url, custom)
    _print_profile(settings, lambda services: service(services, command(user, fields)))


@users_cli.command("create")
def users_create(
    user: UserArg, display_name: DisplayNameOpt = None, avatar_url: AvatarUrlOpt = None, custom: CustomOpt = None,
    redis: RedisOpt = None,
) -> None:
    """Create USER's account (active); refused if it exists (conflict)."""
    from imflow.core import accounts

    _profile_change(accounts.create, accounts.CreateAccount, user, display_name, avatar_url, custom, redis)


@users_cli.command("update")
def users_update(
    user: UserArg, display_name: DisplayNameOpt = None, avatar_url: AvatarUrlOpt = None, custom: CustomOpt = None,
    redis: RedisOpt = None,
) -> None:
    """Change USER's profile: the options given (--custom replaces all custom fields)."""
    from imflow.core import accounts

    _profile_change(accounts.update, accounts.UpdateProfile, user, display_name, avatar_url, custom, redis)


@users_cli.command("list")
def users_list(
    after: Annotated[str | None, typer.Option(help="Start after this user id (the previous page's next_after)")] = None,
    limit: Annotated[int, typer.Option(help="At most this many accounts (1-1000)")] = 100,
    redis: RedisOpt = None,
) -> None:
    """List accounts in user id order: {"users": [...], "next_after": ...}."""
    from imflow.core import accounts

    settings = load_settings(redis_url=redis)
    page = _on_accounts(settings, lambda services: accounts.list_accounts(services, accounts.ListAccounts(after, limit)))
    _print_json({"users": [profile.to_dict() for profile in page.users], "next_after": page.next_after})


@users_cli.command("show")
def users_show(user: UserArg, redis: RedisOpt = None) -> None:
    """Print USER's account."""
    from imflow.core import accounts

    _print_profile(load_settings(redis_url=redis), lambda services: accounts.get(services, accounts.GetAccount(user)))


@users_cli.command("deactivate")
def users_deactivate(user: UserArg, redis: RedisOpt = None) -> None:
    """Deactivate USER: their sessions end on every gateway, their tokens and messages to them are refused."""
    from imflow.core import accounts

    _print_profile(load_settings(redis_url=redis), lambda services: accounts.deactivate(services, accounts.Deactivate(user)))


@users_cli.command("reactivate")
def users_reactivate(user: UserArg, redis: RedisOpt = None) -> None:
    """Make USER's account active again (tokens issued before the deactivation stay revoked)."""
    from imflow.core import accounts

    _print_profile(load_settings(redis_url=redis), lambda services: accounts.reactivate(services, accounts.Reactivate(user)))


@users_cli.command("token")
def users_token(
    user: UserArg,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds (default: IMFLOW_TOKEN_TTL_SECONDS)")] = None,
    redis: RedisOpt = None,
) -> None:
    """Print a token for USER's active account (nothing else, for scripts)."""
    typer.echo(_issue(load_settings(redis_url=redis), user, ttl))


def _issue(settings: Settings, user: str, ttl: int | None) -> str:
    from imflow.core import accounts

    command = accounts.IssueToken(user, ttl)
    hint = f"create the account first: imflow users create {user}"
    return _on_accounts(settings, lambda services: accounts.issue_token(services, command), not_found_hint=hint).token


repair_cli = typer.Typer(help="Rebuild derived state from the source of truth.", no_args_is_help=True)
cli.add_typer(repair_cli, name="repair")
cli.add_typer(archive_cli, name="archive")
cli.command()(simulate)


@repair_cli.command("unread")
def repair_unread(redis: RedisOpt = None, user: Annotated[list[str] | None, typer.Option("--user", help="Only these users (repeatable)")] = None) -> None:
    """Rebuild every user's unread counts (per conversation and total) from seqs and read positions."""
    import asyncio

    from rich.progress import Progress

    from imflow.core.storage.redis_client import connect
    from imflow.core.storage.repair import repair_user, users_with_state

    settings = load_settings(redis_url=redis)
    if not settings.redis_url:
        typer.secho("repair needs the real Redis: pass --redis or set IMFLOW_REDIS_URL", fg="red", err=True)
        raise typer.Exit(2)

    async def run() -> tuple[int, int]:
        client = connect(settings.redis_url)
        users_seen = users_fixed = 0
        try:
            with Progress(transient=True) as progress:
                task = progress.add_task("repairing unread counts", total=None)
                names = user or [name async for name in users_with_state(client)]
                progress.update(task, total=len(names))
                for name in names:
                    result = await repair_user(client, name)
                    users_seen += 1
                    if result.conversations_fixed or result.old_total != result.new_total:
                        users_fixed += 1
                        typer.echo(f"{name}: total {result.old_total} -> {result.new_total}, {result.conversations_fixed} conversation(s) fixed")
                    progress.advance(task)
        finally:
            await client.aclose()
        return users_seen, users_fixed

    seen, fixed = asyncio.run(run())
    typer.echo(f"checked {seen} user(s); fixed {fixed}")


@cli.command()
def plugins() -> None:
    """List the loaded plugins with their versions, where they come from and the hooks they implement."""
    from imflow.plugin_manager import describe, make_hooks

    rows = describe(make_hooks(load_settings()))
    if not rows:
        typer.echo("no plugins loaded")
    for row in rows:
        typer.echo(f"{row['name']} {row['version']} ({row['origin']})")
        typer.echo(f"    hooks: {', '.join(row['hooks']) or '-'}")


@cli.command()
def config() -> None:
    """Print every setting's effective value (secrets masked), its environment variable and meaning:
    imflow's own, then each plugin's (declared by its ``imflow_settings`` hook)."""
    from imflow.plugin_manager import describe_settings, make_hooks

    settings = load_settings()
    try:
        plugin_rows = describe_settings(make_hooks(settings))
    except ValidationError as exc:  # a plugin's settings are read when its object is built
        typer.secho(f"invalid plugin settings:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    rows = settings.described()
    width = max(len(row["env"]) for row in rows + plugin_rows)
    for row in rows:
        typer.echo(f"{row['env']:<{width}}  {row['value']!s:<40}  {row['description']}")
    plugin = None
    for row in plugin_rows:
        if row["plugin"] != plugin:
            plugin = row["plugin"]
            typer.echo(f"\n# plugin {plugin}")
        typer.echo(f"{row['env']:<{width}}  {row['value']!s:<40}  {row['description']}")


def _require_servers(settings: Settings) -> None:
    missing = [name for name, url in (("--kafka / IMFLOW_KAFKA_URL", settings.kafka_url), ("--redis / IMFLOW_REDIS_URL", settings.redis_url)) if not url]
    if missing:
        typer.secho(
            f"this command runs on real servers; set {' and '.join(missing)} "
            "(scripts/services up starts local ones; `scripts/services env` prints their URLs)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)


def main() -> None:
    cli()
