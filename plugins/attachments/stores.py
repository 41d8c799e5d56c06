"""Where attachment bytes live: the S3 object store the archive uses, or a local folder.

Both hand out URLs that expire: the client PUTs the bytes to one and GETs them from another, so
no attachment byte passes through a WebSocket. ``S3Store`` presigns with botocore's SigV4
query signer (the store checks signature and expiry); ``LocalStore`` signs its own URLs with
HMAC-SHA256 and the gateway's plugin route (routes.py) checks them. Every blocking call runs in
a thread: botocore is synchronous, and so is a disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import quote, urlencode

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from .objects import ObjectKey

LOCAL_ROUTE = "/plugins/attachments/object"  # the local store's PUT and GET, on every gateway
WRITE_ONCE = {"If-None-Match": "*"}  # an upload URL's bytes are written once; a second PUT is refused (412)


@dataclass(frozen=True)
class SignedUrl:
    """Where to send a request: ``url`` (absolute for S3, a path on the gateway for the local
    store), the headers the request must carry, and when the URL stops working (ms since epoch)."""

    url: str
    headers: dict[str, str]
    expires_at_ms: int


class Store(Protocol):
    """What the plugin needs of a place for bytes."""

    kind: str

    async def upload_url(self, key: ObjectKey, content_type: str, size: int, expires_at_ms: int) -> SignedUrl:
        """A URL to PUT exactly ``size`` bytes to (``Content-Length`` is signed: any other length is
        refused), with ``Content-Type: content_type``, until ``expires_at_ms``."""
        ...

    async def download_url(self, key: ObjectKey, content_type: str, disposition: str, expires_at_ms: int) -> SignedUrl:
        """A URL to GET the object from until ``expires_at_ms``, answered with this content type and
        ``Content-Disposition``."""
        ...

    async def delete(self, key: ObjectKey) -> None:
        """Remove the object (nothing if there is none)."""
        ...

    async def size(self, key: ObjectKey) -> int | None:
        """The stored object's size in bytes, or None if there is none."""
        ...

    async def read(self, key: ObjectKey, limit: int) -> bytes | None:
        """The object's bytes (None if there is none or it is larger than ``limit`` bytes)."""
        ...

    async def write(self, key: ObjectKey, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (the plugin's own objects: thumbnails)."""
        ...


# ------------------------------------------------------------------------------ local folder


def local_signature(
    secret: bytes, method: str, key: str, expires_at_ms: int, content_type: str = "", disposition: str = "",
    size: str = "",
) -> str:
    """The HMAC-SHA256 (hex) of one local-store request: its method, key, expiry, the content
    type and disposition a GET is answered with, and the size (bytes) a PUT must have, so none
    can be changed."""
    message = "\n".join((method, key, str(expires_at_ms), content_type, disposition, size)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signing_secret(secret_key: str) -> bytes:
    """The local store's HMAC key, derived from IMFLOW_SECRET_KEY (never the token key itself, so a
    URL signature can never be taken for a token's)."""
    return hmac.new(secret_key.encode(), b"imflow attachments: local store URLs v1", hashlib.sha256).digest()


def check_local_signature(secret: bytes, query: dict[str, str], method: str, now_ms: int) -> str | None:
    """Why the local-store request with these query parameters may not go ahead (``"expired"``,
    ``"bad signature"``), or None if it may. Constant-time comparison."""
    spelled = query.get("expires", "")
    if not spelled.isascii() or not spelled.isdigit() or str(int(spelled)) != spelled:  # one spelling of each expiry
        return "bad signature"
    expires = int(spelled)
    expected = local_signature(
        secret, method, query.get("key", ""), expires, query.get("content_type", ""), query.get("disposition", ""),
        query.get("size", ""),
    )
    if not hmac.compare_digest(expected.encode(), query.get("signature", "").encode()):
        return "bad signature"
    if now_ms >= expires:
        return "expired"
    return None


class LocalStore:
    """Objects as files under ``folder``, named by the SHA-256 of their key (no key can name a path)."""

    kind = "local"

    def __init__(self, folder: Path, secret: bytes, base_url: str = "") -> None:
        self.folder = folder
        self.secret = secret
        self.base_url = base_url.rstrip("/")

    def path(self, key: ObjectKey | str) -> Path:
        digest = hashlib.sha256(str(key).encode()).hexdigest()
        return self.folder / digest[:2] / digest

    def _url(self, method: str, key: ObjectKey, expires_at_ms: int, content_type: str = "", disposition: str = "",
             size: str = "") -> str:
        query = {"key": str(key), "expires": str(expires_at_ms)}
        if method == "GET":
            query |= {"content_type": content_type, "disposition": disposition}
        else:
            query["size"] = size
        query["signature"] = local_signature(self.secret, method, str(key), expires_at_ms, content_type, disposition, size)
        return f"{self.base_url}{LOCAL_ROUTE}?{urlencode(query, quote_via=quote)}"

    async def upload_url(self, key: ObjectKey, content_type: str, size: int, expires_at_ms: int) -> SignedUrl:
        return self.upload_url_sync(key, content_type, size, expires_at_ms)

    def upload_url_sync(self, key: ObjectKey, content_type: str, size: int, expires_at_ms: int) -> SignedUrl:
        """``upload_url``, without a thread: signing a local URL is an HMAC, no I/O."""
        url = self._url("PUT", key, expires_at_ms, size=str(size))
        return SignedUrl(url, {"Content-Type": content_type, **WRITE_ONCE}, expires_at_ms)

    async def download_url(self, key: ObjectKey, content_type: str, disposition: str, expires_at_ms: int) -> SignedUrl:
        return self.download_url_sync(key, content_type, disposition, expires_at_ms)

    def download_url_sync(self, key: ObjectKey, content_type: str, disposition: str, expires_at_ms: int) -> SignedUrl:
        """``download_url``, without a thread (an HMAC, no I/O)."""
        return SignedUrl(self._url("GET", key, expires_at_ms, content_type, disposition), {}, expires_at_ms)

    async def exists(self, key: ObjectKey) -> bool:
        """Whether the object's file is there (a stat, in a thread)."""
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: ObjectKey) -> None:
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

    def open_upload(self, key: ObjectKey) -> Upload:
        """A temporary file next to the object's, to stream an upload into (blocking: call it in a
        thread); ``Upload.commit`` moves it into place."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        return Upload(os.fdopen(handle, "wb"), Path(temporary), path)

    async def size(self, key: ObjectKey) -> int | None:
        try:
            return (await asyncio.to_thread(self.path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def read(self, key: ObjectKey, limit: int) -> bytes | None:
        def read() -> bytes | None:
            try:
                with self.path(key).open("rb") as file:
                    data = file.read(limit + 1)
            except FileNotFoundError:
                return None
            return data if len(data) <= limit else None

        return await asyncio.to_thread(read)

    async def write(self, key: ObjectKey | str, data: bytes, content_type: str = "") -> None:
        await asyncio.to_thread(self.write_sync, key, data)

    def write_sync(self, key: ObjectKey | str, data: bytes, once: bool = False) -> bool:
        """Write the file whole or not at all (a temporary file moved into place); with ``once``
        only if there is none yet (an upload is written once). False if it was there already."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            if not once:
                os.replace(temporary, path)
                return True
            try:
                os.link(temporary, path)  # atomic: fails if another upload got there first
            except FileExistsError:
                return False
            return True
        finally:
            Path(temporary).unlink(missing_ok=True)


class Upload:
    """An upload being written to a temporary file (every method blocks: call them in a thread)."""

    def __init__(self, file: BinaryIO, temporary: Path, path: Path) -> None:
        self.file, self.temporary, self.path = file, temporary, path

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> bool:
        """Put the file in place if there is none yet (an upload is written once); False if there was."""
        self.file.close()
        try:
            os.link(self.temporary, self.path)  # atomic: fails if another upload got there first
        except FileExistsError:
            return False
        return True

    def close(self) -> None:
        """Remove the temporary file (after a commit, or instead of one)."""
        self.file.close()
        self.temporary.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ S3


class S3Store:
    """Objects in an S3 bucket under ``prefix``, reached with botocore.

    ``client`` makes the calls; ``presigner`` signs the URLs given to clients, built for the
    endpoint they reach (S3's SigV4 signs the host, so a store behind a proxy or a CDN signs for
    the public name). Both are botocore S3 clients.
    """

    kind = "s3"

    def __init__(self, client: Any, presigner: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.presigner = presigner
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def connect(cls, endpoint: str | None, key_id: str | None, secret: str | None, region: str, use_ssl: bool,
                bucket: str, prefix: str, public_url: str | None = None) -> S3Store:
        """A store on ``endpoint`` (host:port; None: AWS's own) with these credentials (None: botocore's
        usual chain: environment, config files, instance role)."""
        session = botocore.session.get_session()
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                        retries={"max_attempts": 3, "mode": "standard"})
        endpoint_url = f"{'https' if use_ssl else 'http'}://{endpoint}" if endpoint else None

        def client(url: str | None) -> Any:
            return session.create_client("s3", region_name=region, endpoint_url=url, aws_access_key_id=key_id,
                                         aws_secret_access_key=secret, config=config)

        main = client(endpoint_url)
        presigner = client(public_url.rstrip("/")) if public_url else main
        return cls(main, presigner, bucket, prefix)

    def name(self, key: ObjectKey) -> str:
        return f"{self.prefix}{key}"

    async def upload_url(self, key: ObjectKey, content_type: str, size: int, expires_at_ms: int) -> SignedUrl:
        # Content-Type is signed: the bytes are stored as the type declared, never another;
        # Content-Length too: exactly the size declared, or S3 refuses the PUT (403); and
        # If-None-Match: * makes the upload write-once (what was checked and sent stays). The
        # client's HTTP library sets Content-Length itself (a browser may not set it at all).
        params = {"Key": self.name(key), "ContentType": content_type, "ContentLength": size, "IfNoneMatch": "*"}
        url = await self._presign("put_object", params, expires_at_ms)
        return SignedUrl(url, {"Content-Type": content_type, **WRITE_ONCE}, expires_at_ms)

    async def download_url(self, key: ObjectKey, content_type: str, disposition: str, expires_at_ms: int) -> SignedUrl:
        params = {"Key": self.name(key), "ResponseContentType": content_type, "ResponseContentDisposition": disposition}
        return SignedUrl(await self._presign("get_object", params, expires_at_ms), {}, expires_at_ms)

    async def _presign(self, operation: str, params: dict[str, Any], expires_at_ms: int) -> str:
        seconds = max(1, round(expires_at_ms / 1000 - time.time()))  # SigV4 counts whole seconds from now
        # in a thread: botocore may resolve or refresh credentials (files, an instance role) on the way
        url = await asyncio.to_thread(self.presigner.generate_presigned_url, operation,
                                      Params={"Bucket": self.bucket, **params}, ExpiresIn=seconds)
        return str(url)

    async def delete(self, key: ObjectKey) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self.name(key))

    async def size(self, key: ObjectKey) -> int | None:
        try:
            head = await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=self.name(key))
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return int(head["ContentLength"])

    async def read(self, key: ObjectKey, limit: int) -> bytes | None:
        def read() -> bytes | None:
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=self.name(key))
            except ClientError as error:
                if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise
            with reply["Body"] as body:
                data = body.read(limit + 1)
            return data if len(data) <= limit else None

        return await asyncio.to_thread(read)

    async def write(self, key: ObjectKey, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self.name(key), Body=data,
                                ContentType=content_type)
