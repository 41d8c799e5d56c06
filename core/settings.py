"""The one settings object: every setting with its type, default, environment variable and description.

Values come from the environment (``IMFLOW_<NAME>``), then a ``.env`` file, then the default.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "IMFLOW_"


def _default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- where the parts run
    kafka_url: str | None = Field(
        None, description="Kafka bootstrap URL (kafka://host:port[,host:port]); unset = in-process transport"
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL: redis://host:port/db for one server, redis+cluster://host:port[,host:port…] "
        "for a Redis Cluster (db 0); unset = in-process fakeredis",
    )
    data_dir: Path = Field(Path("data"), description="Folder for the history archive and worker state")
    app_id: str = Field("imflow", description="Faust app id: consumer group and prefix of every Kafka topic")
    topic_partitions: int = Field(8, ge=1, description="Partitions of each imflow topic (bounds worker parallelism)")
    topic_replication_factor: int = Field(1, ge=1, description="Replicas of each imflow topic (3 in production)")
    node_name: str = Field(
        default_factory=_default_node_name, description="This process's name in logs and gateway routing"
    )

    # --- the gateway's HTTP/WebSocket listener
    host: str = Field("127.0.0.1", description="Address the gateway listens on")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on")

    # --- identity and limits
    secret_key: SecretStr = Field(
        SecretStr("imflow-development-secret-change-me"),
        description="HMAC key that signs client tokens; set your own outside development",
    )
    token_ttl_seconds: int = Field(86_400, gt=0, description="Lifetime of issued client tokens")
    max_frame_bytes: int = Field(65_536, gt=0, description="Largest WebSocket frame a client may send")
    dedup_ttl_seconds: int = Field(
        7 * 86_400, gt=0, description="How long a client message id is remembered for de-duplication"
    )

    agent_batch_max: int = Field(200, gt=0, description="Most records an agent handles in one batch")
    agent_batch_wait_ms: float = Field(
        2.0, ge=0, description="How long an agent waits to fill a batch (adds up to this much latency)"
    )
    # --- worker failover (Kafka consumer group): how fast partitions of a dead worker move on
    worker_session_timeout_seconds: float = Field(
        6.0, gt=0,
        description="A worker silent this long is presumed dead and its partitions reassigned "
        "(Kafka's group.min.session.timeout.ms, 6 s by default, is the floor)",
    )
    worker_heartbeat_seconds: float = Field(
        1.0, gt=0, description="How often a worker tells the group it lives (well under a third of the session timeout)"
    )
    worker_rebalance_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a rebalance waits for the live workers to rejoin"
    )
    worker_instance_id: str | None = Field(
        None,
        description="Static group membership (KIP-345): a worker restarted with the same id within the "
        "session timeout gets its partitions back without a rebalance. One distinct id per worker "
        "(e.g. the host or pod name); unset = dynamic membership",
    )
    # --- gateway liveness: how fast a dead gateway's presence entries are swept
    gateway_heartbeat_seconds: float = Field(
        2.0, gt=0, description="How often a gateway tells Redis it lives (and sweeps the entries of dead ones)"
    )
    gateway_liveness_ttl_seconds: float = Field(
        6.0, gt=0,
        description="A gateway silent this long is presumed dead: no pushes are routed to it and its "
        "presence entries are swept (keep it at least 3 heartbeats)",
    )
    inbox_limit: int = Field(1000, gt=0, description="Newest messages kept in each user's inbox (offline queue)")
    conversation_log_limit: int = Field(
        1000, gt=0, description="Newest messages of each conversation kept in Redis; older come from the archive"
    )
    read_fan_out_threshold: int = Field(
        100,
        ge=2,
        description="Groups with at least this many members use read fan-out (one stored copy, unread "
        "derived from seqs); smaller ones write each member's inbox. Plugins may choose per group",
    )
    group_unread_flush_seconds: float = Field(
        5.0, gt=0, description="How often unread counts of read fan-out groups are flushed to their members"
    )
    outbound_buffer_bytes: int = Field(
        512 * 1024,
        ge=16 * 1024,
        description="Bytes a connection may have waiting in the gateway (beyond what the kernel's socket "
        "buffer holds) before it counts as behind: its live-room chat is dropped, and past twice this "
        "it is closed (4008) at once",
    )
    socket_send_buffer_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Each client socket's kernel send buffer (SO_SNDBUF; Linux doubles it; 0 leaves the kernel's "
        "autotuning, up to 4 MB): what the kernel holds for a client that stopped reading before the gateway sees it",
    )
    slow_consumer_seconds: float = Field(
        3.0, gt=0, description="A connection that stays behind (see outbound_buffer_bytes) this long is closed (4008)"
    )
    archive_flush_seconds: float = Field(1.0, gt=0, description="How often pending records are sealed into the archive")
    archive_batch: int = Field(50_000, gt=0, description="Most records one partition gives to one archive write")
    # --- the archive, a DuckLake (core/storage/lake.py): a catalog database plus Parquet data files
    archive_catalog: str | None = Field(
        None,
        description="DuckLake catalog, as after 'ducklake:' in ATTACH: sqlite:PATH, postgres:<libpq string> "
        "(e.g. postgres:dbname=imflow host=127.0.0.1 port=15432 user=imflow) or duckdb:PATH (one process only); "
        "unset = sqlite:{data_dir}/archive/catalog.sqlite",
    )
    archive_schema: str | None = Field(
        None,
        description="Catalog schema of this lake (several imflow apps may share one PostgreSQL database); "
        "unset = the catalog's default",
    )
    archive_data_path: str | None = Field(
        None,
        description="Where a new lake puts its Parquet files: a folder or s3://bucket/prefix/ (once the lake exists, "
        "the path stored in its catalog wins); unset = {data_dir}/archive/data/",
    )
    s3_endpoint: str | None = Field(None, description="S3 endpoint host:port of the archive's data (unset: AWS's own, or no S3)")
    s3_key_id: str | None = Field(None, description="S3 access key id of the archive's data")
    s3_secret: SecretStr | None = Field(None, description="S3 secret access key of the archive's data")
    s3_region: str = Field("us-east-1", description="S3 region of the archive's data")
    s3_use_ssl: bool = Field(False, description="Reach the S3 endpoint over HTTPS")
    archive_maintenance_seconds: float = Field(
        300.0, gt=0,
        description="How often one worker maintains the archive: inlined rows to files, small files merged, "
        "retention, old snapshots expired",
    )
    archive_merge_seconds: float = Field(
        10.0, ge=0,
        description="How often one worker merges the archive's fresh small files (pages slow down with each file); "
        "0 = only maintenance merges",
    )
    archive_retention_days: float = Field(
        0, ge=0,
        description="Archive rows older than this many days are deleted (the membership and social records stay); 0 = keep all",
    )
    archive_snapshot_days: float = Field(
        7, ge=0, description="How far back time travel reaches: older archive snapshots expire and their files are deleted"
    )

    # --- accounts and the social graph (core/accounts.py, core/contacts.py)
    accounts: Literal["registered", "open"] = Field(
        "registered",
        description="registered: a token counts only for an active account created through the admin API, "
        "the CLI or development sign-in; open: a valid token's user is registered on first sign-in "
        "(development, tests)",
    )
    admin_secret: SecretStr | None = Field(
        None, description="Bearer secret of the admin HTTP API (/admin/users); unset: the admin API is off"
    )
    profile_custom_max_bytes: int = Field(4096, gt=0, description="Largest custom profile fields, as compact JSON")
    contacts_max: int = Field(5000, gt=0, description="Most contacts one user may have")
    blocked_max: int = Field(5000, gt=0, description="Most users one user may block")
    contact_requests_max: int = Field(1000, gt=0, description="Most pending contact requests per user and direction")
    presence_watch_max: int = Field(1000, gt=0, description="Most users one connection may watch the presence of")

    dev_login: bool | None = Field(
        None,
        description="Serve POST /dev/token (sign in as anyone, for development); default: on only for the embedded server",
    )
    disabled_plugins: str = Field("", description="Comma-separated names of plugins not to load")

    log_level: str = Field("info", description="Log level: debug, info, warning, error")

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (HMAC-SHA256 keys shorter than that are guessable)")
        return value

    @field_validator("admin_secret")
    @classmethod
    def _admin_secret_or_none(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty IMFLOW_ADMIN_SECRET= means off, never "the empty bearer token opens it"
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip().encode()) < 16:
            raise ValueError("must be at least 16 bytes (or unset, to turn the admin API off)")
        return value

    @model_validator(mode="after")
    def _heartbeats_fit_their_timeouts(self) -> Settings:
        # one late beat (a busy loop, a slow Redis) must not get a live gateway swept
        if self.gateway_liveness_ttl_seconds < 2 * self.gateway_heartbeat_seconds:
            raise ValueError("gateway_liveness_ttl_seconds must be at least twice gateway_heartbeat_seconds")
        if self.worker_heartbeat_seconds >= self.worker_session_timeout_seconds:  # Kafka refuses it
            raise ValueError("worker_heartbeat_seconds must be below worker_session_timeout_seconds (a third of it or less)")
        return self

    @property
    def dev_login_enabled(self) -> bool:
        # 'not': the embedded stack of the tests sets the URLs to empty strings
        return self.dev_login if self.dev_login is not None else (not self.kafka_url and not self.redis_url)

    @property
    def embedded_transport(self) -> bool:
        return not self.kafka_url

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def disabled_plugin_names(self) -> set[str]:
        return {name.strip() for name in self.disabled_plugins.split(",") if name.strip()}

    @property
    def archive_dir(self) -> Path:
        """The folder of the default (embedded) archive: its SQLite catalog and data files."""
        return self.data_dir / "archive"

    @property
    def kafka_bootstrap(self) -> str:
        """The URL as aiokafka wants it: ``host:port[,host:port]``."""
        if not self.kafka_url:
            raise ValueError("kafka_url is not set")
        return self.kafka_url.split("://", 1)[-1].rstrip("/")

    def described(self) -> list[dict[str, Any]]:
        """Every setting with its effective value (secrets masked), environment variable and description."""
        return described(self)


def described(settings: BaseSettings) -> list[dict[str, Any]]:
    """The fields of one pydantic-settings object (imflow's or a plugin's): ``name``, ``value``
    (secrets masked), ``env`` (its environment variable) and ``description``."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return [
        {
            "name": name,
            "value": "********" if isinstance(value := getattr(settings, name), SecretStr) else value,
            "env": f"{prefix}{name}".upper(),
            "description": field.description or "",
        }
        for name, field in type(settings).model_fields.items()
    ]
