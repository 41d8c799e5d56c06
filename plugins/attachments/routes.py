"""The local store's HTTP route on every gateway: PUT an upload, GET a download, both by signed URL.

``/plugins/attachments/object?key=…&expires=…[&size=…|&content_type=…&disposition=…]&signature=…``:
the signature (stores.local_signature) covers every parameter, the method and the expiry, so a
URL does one thing until it expires; an upload URL fixes the size. Answers: 403 for a bad
signature or an expired URL; for a PUT 412 when the object is there already (an upload is
written once: answered before a byte is read), 411 without a Content-Length, 413 over the size
limit, 400 ``attachment.size_mismatch`` for a length other than the signed one, 503
``attachment.busy`` (with Retry-After) when this gateway takes as many uploads at once as it
may; 404 for a GET of nothing, 400 for a bad key.

An upload is streamed to a temporary file in chunks (each write in a thread), never held whole
in memory, and moved into place once complete: at most ``max_uploads`` uploads per gateway at a
time, each buffering at most ``CHUNK`` bytes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from . import objects
from .stores import LOCAL_ROUTE, check_local_signature

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request

    from .objects import ObjectKey
    from .stores import LocalStore

CHUNK = 1024 * 1024  # bytes gathered before each write to disk
BUSY_RETRY_SECONDS = 2


def _refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def object_route(store: Callable[[], LocalStore | None], max_bytes: Callable[[], int], max_uploads: int = 16) -> Route:
    """The route, reading the store and the size limit when a request comes (they are set at
    start-up); ``max_uploads``: uploads this gateway takes at once (more answer 503)."""
    slots = asyncio.Semaphore(max_uploads)

    async def handle(request: Request) -> Response:
        local = store()
        if local is None:  # this gateway keeps attachments on S3
            return _refusal(404, "attachment.missing", "attachments are not kept on this gateway")
        query = dict(request.query_params)
        problem = check_local_signature(local.secret, query, request.method, int(time.time() * 1000))
        if problem is not None:
            return _refusal(403, "attachment.url_refused", f"this URL is refused: {problem}")
        key = objects.parse(query.get("key"))
        if key is None:
            return _refusal(400, "attachment.bad_request", "not an attachment key")
        if request.method == "PUT":
            if slots.locked():  # refused at once: a waiting upload would hold its connection anyway
                return _refusal(503, "attachment.busy", "too many uploads at once; try again shortly",
                                {"Retry-After": str(BUSY_RETRY_SECONDS)})
            async with slots:
                return await _put(request, local, key, query.get("size", ""), max_bytes())
        if not await local.exists(key):
            return _refusal(404, "attachment.missing", "no such object")
        headers = {
            "Content-Disposition": query.get("disposition", "attachment"),
            "X-Content-Type-Options": "nosniff",  # served as declared, never sniffed into HTML
            "Content-Security-Policy": "sandbox",  # and if opened, it runs nothing
            "Cache-Control": "private, max-age=3600",
        }
        return FileResponse(local.path(key), media_type=query.get("content_type") or "application/octet-stream",
                            headers=headers)

    return Route(LOCAL_ROUTE, handle, methods=["GET", "PUT"])


async def _put(request: Request, local: LocalStore, key: ObjectKey, signed_size: str, limit: int) -> Response:
    """Stream one upload to its file; the answer (see the module's docstring)."""
    if await local.exists(key):  # before reading a byte of the body
        return _refusal(412, "attachment.exists", "this object was uploaded already; ask for a new upload")
    declared = request.headers.get("content-length")
    if declared is None or not declared.isascii() or not declared.isdigit():
        return _refusal(411, "attachment.length_required", "send the bytes with a Content-Length")
    if int(declared) > limit:
        return _refusal(413, "attachment.too_large", f"at most {limit} bytes")
    if declared != signed_size:  # the URL's size is signed: one spelling, the declared size
        return _refusal(400, "attachment.size_mismatch", f"this upload is {signed_size} bytes, not {declared}")
    size = int(declared)
    upload = await asyncio.to_thread(local.open_upload, key)
    try:
        written, buffer = 0, bytearray()
        async for chunk in request.stream():  # counted as it comes: the server frames by Content-Length, but check
            written += len(chunk)
            if written > size:
                return _refusal(400, "attachment.size_mismatch", f"more than the {size} bytes declared")
            buffer += chunk
            if len(buffer) >= CHUNK:
                await asyncio.to_thread(upload.write, bytes(buffer))
                buffer.clear()
        if written != size:
            return _refusal(400, "attachment.size_mismatch", f"{written} bytes came, {size} declared")
        await asyncio.to_thread(upload.write, bytes(buffer))
        if not await asyncio.to_thread(upload.commit):
            return _refusal(412, "attachment.exists", "this object was uploaded already; ask for a new upload")
    finally:
        await asyncio.to_thread(upload.close)
    return Response(status_code=200)
