"""Attachments: ``image`` and ``file`` messages, their bytes in an object store, never in a frame.

A client asks for an upload URL (``attachment.upload``: conversation, name, size, content
type; refused over the size limit or for a type not allowed), PUTs the bytes there, then sends
a message ``{"type": "image"|"file", "body": {"object": key}}``. Before it is queued this
plugin's ``imflow_before_send`` checks the object: the key names the sender and this
conversation, the object is stored and its size is the one declared; an image must decode
(Pillow), and gets a thumbnail, made once and stored next to it. The body stored is what the
server recorded: ``object, name, size, content_type`` and for an image ``width, height,
thumbnail``. Members get download URLs that expire (``attachment.url``).

Stores (stores.py): the S3 object store the archive uses (IMFLOW_S3_*), with botocore's SigV4
presigned URLs, or with no S3 configured a folder under the data dir, whose HMAC-signed URLs the
gateways' route ``/plugins/attachments/object`` serves. What was declared at upload is kept in
Redis (``att:meta:<key>``) until the message is sent, then for good.

Settings: ``IMFLOW_ATTACHMENTS_…`` (``AttachmentSettings``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import (
    AgentContext,
    Amendment,
    GatewayContext,
    ImflowError,
    Message,
    MessageBody,
    MessageType,
    Operation,
    OperationContext,
    OperationError,
    Rejection,
    SendCommand,
    Services,
    Settings,
    TimerSpec,
    hookimpl,
    is_member,
    may_write,
    now_ms,
)

from . import images, objects
from .routes import object_route
from .stores import LocalStore, S3Store, SignedUrl, Store, signing_secret

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.routing import BaseRoute

    from .objects import ObjectKey

log = logging.getLogger(__name__)
TYPES = ("image", "file")
CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}$")
CONVERSATION = re.compile(rf"^(?:{objects._CONVERSATION})$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 255
THUMBNAIL_TYPE = "image/jpeg"


class AttachmentSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_ATTACHMENTS_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_ATTACHMENTS_", env_file=".env", extra="ignore")

    store: Literal["auto", "s3", "local"] = Field(
        "auto", description="Where the bytes go: s3 (the archive's object store, IMFLOW_S3_*), local (a folder "
        "under the data dir, served by the gateways), or auto: s3 when the archive's data is on S3, else local",
    )
    max_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest attachment, in bytes")
    allowed_types: str = Field(
        "image/jpeg,image/png,image/gif,image/webp,application/pdf,text/plain,text/csv,application/zip,"
        "audio/mpeg,audio/ogg,video/mp4,application/octet-stream",
        description="Content types that may be uploaded, comma-separated; 'image/*' allows a whole family, '*' any",
    )
    upload_url_seconds: int = Field(900, gt=0, description="How long an upload URL works")
    download_url_seconds: int = Field(3600, gt=0, description="How long a download URL works")
    unsent_seconds: int = Field(
        86_400, gt=0, description="How long an upload may wait to be sent in a message before its record is forgotten"
    )
    max_image_pixels: int = Field(
        24_000_000, gt=0, description="Largest image, in pixels, that is decoded for its thumbnail (a 24 MP photo; "
        "decoding takes up to 4 bytes a pixel)",
    )
    image_workers: int = Field(2, ge=1, le=8, description="Images decoded at once per process (CPU and memory bound)")
    max_uploads: int = Field(16, ge=1, description="Uploads to the local store that one gateway takes at once (more: 503)")
    reclaim_interval_seconds: float = Field(
        600, ge=0, description="How often a worker deletes uploads never sent (older than UNSENT_SECONDS); 0: never",
    )
    thumbnail_edge: int = Field(320, ge=16, le=2048, description="Longer side of a thumbnail, in pixels")
    s3_bucket: str | None = Field(
        None, description="Bucket of the S3 store (unset: the archive's, from IMFLOW_ARCHIVE_DATA_PATH)"
    )
    s3_prefix: str = Field("attachments/", description="Prefix of every attachment's object name in the bucket")
    s3_public_url: str | None = Field(
        None,
        description="The S3 endpoint as clients reach it (http[s]://host[:port]), if not IMFLOW_S3_ENDPOINT: "
        "URLs are signed for it",
    )
    local_dir: Path | None = Field(None, description="Folder of the local store (unset: {data_dir}/attachments)")
    local_base_url: str = Field(
        "", description="What the local store's URLs start with (unset: a path on the gateway that answered)"
    )

    def allows(self, content_type: str) -> bool:
        """Whether uploads of ``content_type`` are allowed."""
        for allowed in (item.strip().lower() for item in self.allowed_types.split(",")):
            if allowed in ("*", content_type) or (allowed.endswith("/*") and content_type.startswith(allowed[:-1])):
                return True
        return False


class AttachmentBody(MessageBody):
    """What a client sends in an ``image`` or ``file`` message: the uploaded object's key. The body
    stored is what the server recorded of it (see the module's docstring)."""

    object: str = Field(max_length=256)


def meta_key(key: ObjectKey) -> str:
    """The Redis hash of what was declared (and found) for an upload; once its message is
    recalled, only ``recalled`` (ms since epoch) is left in it."""
    return f"att:meta:{key.original_key()}"


def message_key(mid: str) -> str:
    """The object key of message ``mid`` (a string), recorded once the message is stored."""
    return f"att:mid:{mid}"


UNSENT = "att:unsent"  # sorted set: object key -> when its upload was asked for (ms), until sent


def disposition(kind: str, name: str) -> str:
    """A Content-Disposition for ``name`` in any script (RFC 6266: an ASCII fallback, and UTF-8)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "file"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _decoded(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class Attachments:
    """The plugin object: one per plugin manager, its store built when imflow's settings are known."""

    def __init__(self) -> None:
        self.settings = AttachmentSettings()
        self.store: Store | None = None
        self.redis: Redis | None = None
        self.decoding: asyncio.Semaphore | None = None

    # -------------------------------------------------------------------- start-up

    @hookimpl
    def imflow_settings(self) -> AttachmentSettings:
        return self.settings

    @hookimpl
    def imflow_configure(self, settings: Settings) -> None:
        self.store = build_store(self.settings, settings)

    @hookimpl
    def imflow_startup(self, services: Services) -> None:
        self.redis = services.redis  # for before_send called outside a gateway

    @hookimpl
    def imflow_message_types(self) -> list[MessageType]:
        return [MessageType(name, schema=AttachmentBody) for name in TYPES]

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        return [Operation("attachment.upload", self.upload), Operation("attachment.url", self.url)]

    @hookimpl
    def imflow_http_routes(self) -> list[BaseRoute]:
        return [object_route(lambda: self.store if isinstance(self.store, LocalStore) else None,
                             lambda: self.settings.max_bytes, self.settings.max_uploads)]

    @hookimpl
    def imflow_stream_agents(self) -> list[TimerSpec]:
        return [TimerSpec("attachments.reclaim", lambda _: self.settings.reclaim_interval_seconds, self._reclaim_tick)]

    async def _reclaim_tick(self, context: AgentContext) -> None:
        if self.store is not None:
            grace_ms = RECLAIM_GRACE_SECONDS * 1000
            await reclaim(context.redis, self.store, now_ms() - self.settings.unsent_seconds * 1000 - grace_ms)

    # -------------------------------------------------------------------- stored, recalled

    @hookimpl
    async def imflow_after_persist(self, messages: list[Message], context: AgentContext) -> None:
        """Record each attachment message's object (``att:mid:<mid>``), so a recall finds it.
        Idempotent: a replay sets the same value."""
        found = {m.mid: m.body["object"] for m in messages if m.type in TYPES and isinstance(m.body.get("object"), str)}
        if found:
            async with context.redis.pipeline(transaction=False) as pipe:
                for mid, key in found.items():
                    pipe.set(message_key(str(mid)), key)
                await pipe.execute()

    @hookimpl
    async def imflow_message_amended(self, amendment: Amendment, services: Services) -> None:
        """A recalled attachment message: its object, thumbnail and record are deleted, so no URL
        reaches them again (``attachment.url`` answers ``attachment.recalled``; URLs already given
        answer 404). Idempotent."""
        if amendment.kind != "recall" or amendment.message.get("type") not in TYPES:
            return
        spelled = await services.redis.get(message_key(str(amendment.mid)))
        key = objects.parse(spelled.decode() if isinstance(spelled, bytes) else spelled)
        if key is None or self.store is None:
            return
        async with services.redis.pipeline(transaction=True) as pipe:  # record first: no new URL from now on
            pipe.delete(meta_key(key))
            pipe.hset(meta_key(key), "recalled", str(amendment.at_ms))
            await pipe.execute()
        await asyncio.gather(self.store.delete(key), self.store.delete(key.thumbnail_key()))

    def _decoding(self) -> asyncio.Semaphore:
        """The semaphore around image decoding (made on first use, in the running loop)."""
        if self.decoding is None:
            self.decoding = asyncio.Semaphore(self.settings.image_workers)
        return self.decoding

    def _store(self) -> Store:
        if self.store is None:
            raise OperationError("attachment.unavailable", "attachments are not configured on this server (see its log)")
        return self.store

    # -------------------------------------------------------------------- operations

    async def upload(self, context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
        """``attachment.upload``: a key and a URL to PUT the bytes to. Raises ImflowError
        ``bad_frame`` (fields), ``not_found`` (not a member), ``attachment.too_large``,
        ``attachment.type_refused``."""
        conversation, name, size, content_type = (frame.get(k) for k in ("conversation", "name", "size", "content_type"))
        if not isinstance(conversation, str) or not CONVERSATION.fullmatch(conversation):
            raise ImflowError("bad_frame", "give the conversation (p:… or g:…)")
        if conversation.startswith("p:") and conversation[2:].split(":")[0] > conversation[2:].split(":")[1]:
            raise ImflowError("bad_frame", "a one-to-one conversation id lists its two users sorted")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or CONTROL.search(name):
            raise ImflowError("bad_frame", f"give the file's name: 1-{MAX_NAME} characters, no control characters")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ImflowError("bad_frame", "give the size in bytes, a positive integer")
        if not isinstance(content_type, str) or not CONTENT_TYPE.fullmatch(content_type.lower()):
            raise ImflowError("bad_frame", "give the content type, as type/subtype")
        content_type = content_type.lower()
        if size > self.settings.max_bytes:
            raise OperationError("attachment.too_large", f"at most {self.settings.max_bytes} bytes")
        if not self.settings.allows(content_type):
            raise OperationError("attachment.type_refused", f"{content_type} may not be uploaded here")
        if not await is_member(context.redis, conversation, context.user):
            raise ImflowError("not_found", "no such conversation")
        if conversation.startswith("p:"):  # what the send would refuse (blocks, contacts-only), the bytes too
            peer = next((u for u in conversation[2:].split(":") if u != context.user), context.user)
            if not await may_write(context.redis, context.settings, context.user, peer):
                raise ImflowError("not_found", "no such conversation")
        store = self._store()
        key = objects.new_key(conversation, context.user)
        meta = {"uploader": context.user, "conversation": conversation, "name": name, "size": size,
                "content_type": content_type, "uploaded_at_ms": now_ms()}
        async with context.redis.pipeline(transaction=False) as pipe:
            pipe.hset(meta_key(key), mapping=meta)
            pipe.expire(meta_key(key), self.settings.unsent_seconds)
            pipe.zadd(UNSENT, {str(key): meta["uploaded_at_ms"]})  # reclaimed if never sent (reclaim)
            await pipe.execute()
        signed = await store.upload_url(key, content_type, size, now_ms() + self.settings.upload_url_seconds * 1000)
        return {"object": str(key), **_url_fields(signed)}

    async def url(self, context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
        """``attachment.url``: a download URL for an object of a conversation the user is in (an
        image's thumbnail too). Raises ImflowError ``bad_frame``, ``not_found`` (not a member),
        ``attachment.missing`` (no such object, or not sent yet and not the asker's)."""
        key = objects.parse(frame.get("object"))
        if key is None:
            raise ImflowError("bad_frame", "give the object's key")
        if not await is_member(context.redis, key.conversation, context.user):
            raise ImflowError("not_found", "no such conversation")
        meta = _decoded(await context.redis.hgetall(meta_key(key)))
        if "recalled" in meta:
            raise OperationError("attachment.recalled", "its message was recalled: the object is gone")
        if not meta or (meta.get("sent") != "1" and key.uploader != context.user):
            raise OperationError("attachment.missing", "no such object")
        if key.thumbnail:
            if "thumbnail" not in meta:
                raise OperationError("attachment.missing", "no thumbnail for this object")
            content_type, shown = THUMBNAIL_TYPE, disposition("inline", "thumbnail.jpg")
        elif "width" in meta:  # an image, checked: shown inline as what it really is
            content_type, shown = meta["image_type"], disposition("inline", meta["name"])
        else:
            content_type, shown = meta["content_type"], disposition("attachment", meta["name"])
        expires = now_ms() + self.settings.download_url_seconds * 1000
        signed = await self._store().download_url(key, content_type, shown, expires)
        return {"object": str(key), **_url_fields(signed)}

    # -------------------------------------------------------------------- the send

    @hookimpl
    async def imflow_before_send(self, command: SendCommand, gateway: GatewayContext | None) -> SendCommand | Rejection | None:
        """For an ``image`` or ``file`` message: the command with the body the server recorded, or a
        Rejection (``attachment.missing``, ``.not_yours``, ``.too_large``, ``.type_refused``,
        ``.size_mismatch``). Other messages pass untouched."""
        if command.type not in TYPES:
            return None
        redis = gateway.redis if gateway is not None else self.redis
        if redis is None or self.store is None:
            return Rejection("attachment.unavailable", "attachments are not configured on this server")
        try:
            return await self._checked(command, redis)
        except Exception:  # the store or Redis failed: refuse, never let an unchecked body through
            log.exception("attachments: could not check %s's %s message", command.sender, command.type)
            return Rejection("attachment.unavailable", "the attachment could not be checked now; resend shortly")

    async def _checked(self, command: SendCommand, redis: Redis) -> SendCommand | Rejection:
        key = objects.parse(command.body.get("object"))
        if key is None or key.thumbnail:
            return Rejection("attachment.missing", "no such object: send the key attachment.upload gave")
        if key.uploader != command.sender or key.conversation != command.conversation:
            return Rejection("attachment.not_yours", "send only what you uploaded to this conversation")
        meta = _decoded(await redis.hgetall(meta_key(key)))
        if "recalled" in meta:
            return Rejection("attachment.recalled", "its message was recalled: the object is gone")
        if not meta:
            return Rejection("attachment.missing", "no such object (or its upload was not sent in time)")
        refused = await self._check(redis, key, meta, command.type)
        if isinstance(refused, Rejection):
            return refused
        body: dict[str, Any] = {"object": str(key), "name": meta["name"], "size": int(meta["size"]),
                                "content_type": meta["content_type"], **refused}
        async with redis.pipeline(transaction=False) as pipe:  # kept as long as the message is
            pipe.hset(meta_key(key), "sent", "1")
            pipe.persist(meta_key(key))
            pipe.zrem(UNSENT, str(key))
            await pipe.execute()
        return command.model_copy(update={"body": body})

    async def _check(self, redis: Redis, key: ObjectKey, meta: dict[str, str], kind: str) -> Rejection | dict[str, Any]:
        """The stored object against what was declared: a Rejection, or what an image adds to the body."""
        assert self.store is not None
        limit, declared = self.settings.max_bytes, int(meta["size"])
        if not self.settings.allows(meta["content_type"]):
            return Rejection("attachment.type_refused", f"{meta['content_type']} may not be sent here")
        if declared > limit:
            return Rejection("attachment.too_large", f"at most {limit} bytes")
        size = await self.store.size(key)
        if size is None:
            return Rejection("attachment.missing", "nothing was uploaded for this object")
        if size > limit:
            return Rejection("attachment.too_large", f"{size} bytes were uploaded; at most {limit}")
        if size != declared:
            return Rejection("attachment.size_mismatch", f"{size} bytes were uploaded, {declared} declared")
        if kind != "image":
            return {}
        if "width" not in meta:  # examined once; a resend finds it done
            found = await self._examine(key, limit)
            if isinstance(found, Rejection):
                return found
            await redis.hset(meta_key(key), mapping=cast("dict[Any, Any]", found))  # redis-py types keys invariantly
            meta |= found
        return {"content_type": meta["image_type"], "width": int(meta["width"]), "height": int(meta["height"]),
                "thumbnail": str(key.thumbnail_key())}

    async def _examine(self, key: ObjectKey, limit: int) -> Rejection | dict[str, str]:
        """Decode the image, store its thumbnail, and record what it is (in its Redis hash)."""
        assert self.store is not None
        data = await self.store.read(key, limit)
        if data is None:
            return Rejection("attachment.missing", "nothing was uploaded for this object")
        try:
            async with self._decoding():  # a few at a time: each may take a CPU and ~100 MB
                picture = await asyncio.to_thread(images.examine, data, self.settings.max_image_pixels,
                                                  self.settings.thumbnail_edge)
        except images.NotAnImage as error:
            return Rejection("attachment.type_refused", f"not an image: {error}; send it as a file")
        await self.store.write(key.thumbnail_key(), picture.thumbnail, THUMBNAIL_TYPE)
        return {"image_type": picture.content_type, "width": str(picture.width), "height": str(picture.height),
                "thumbnail": str(key.thumbnail_key())}


RECLAIM_GRACE_SECONDS = 300  # past UNSENT_SECONDS: a send that read the record just before it expired is done
RECLAIM_BATCH = 500


async def reclaim(redis: Redis, store: Store, before_ms: int) -> int:
    """Delete the objects (and thumbnails) of uploads asked for before ``before_ms`` and never sent
    (those in ``att:unsent``), in batches; how many. Safe on many workers at once: only the one
    whose ZREM takes a key deletes it."""
    deleted = 0
    while True:
        due = await redis.zrangebyscore(UNSENT, "-inf", before_ms, start=0, num=RECLAIM_BATCH)
        if not due:
            return deleted
        for spelled in cast("list[bytes]", due):
            if not await redis.zrem(UNSENT, spelled):
                continue  # another worker has it, or it was sent a moment ago
            key = objects.parse(spelled.decode())
            if key is not None:
                await asyncio.gather(store.delete(key), store.delete(key.thumbnail_key()))
                deleted += 1


def _url_fields(signed: SignedUrl) -> dict[str, Any]:
    return {"url": signed.url, "expires_at_ms": signed.expires_at_ms, "headers": signed.headers}


def build_store(plugin: AttachmentSettings, settings: Settings) -> Store:
    """The store these settings name (``auto``: S3 when the archive's data is on S3 or an S3
    endpoint is set, else the local folder). Raises ValueError for S3 without a bucket."""
    archive_path = settings.archive_data_path or ""
    kind = plugin.store
    if kind == "auto":
        kind = "s3" if archive_path.startswith("s3://") or settings.s3_endpoint else "local"
    if kind == "local":
        folder = plugin.local_dir or Path(settings.data_dir) / "attachments"
        return LocalStore(folder, signing_secret(settings.secret_key.get_secret_value()), plugin.local_base_url)
    bucket = plugin.s3_bucket or (archive_path.removeprefix("s3://").split("/", 1)[0] if archive_path.startswith("s3://") else "")
    if not bucket:
        raise ValueError("the attachments' S3 store needs a bucket: set IMFLOW_ATTACHMENTS_S3_BUCKET")
    secret = settings.s3_secret.get_secret_value() if settings.s3_secret else None
    return S3Store.connect(settings.s3_endpoint, settings.s3_key_id, secret, settings.s3_region, settings.s3_use_ssl,
                           bucket, plugin.s3_prefix, plugin.s3_public_url)
