"""Attachments (plugins/attachments): images and files through the real protocol on both stacks —
the embedded one keeps the bytes in its local folder (HMAC-signed URLs served by the gateway),
the real one in the S3 object store the archive uses (SigV4 presigned URLs) — every refusal
changing nothing, URLs that expire, and a property test of the local store's URL check."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from stacks import SECRET, connect, refused

from imflow.core.models import direct_conversation
from imflow.plugins.attachments import images, objects
from imflow.plugins.attachments.stores import LocalStore, S3Store, check_local_signature, local_signature, signing_secret
from imflow.testing import eventually

MAX_BYTES = 200_000
STACK_EXTRA_ENV = {"IMFLOW_ATTACHMENTS_MAX_BYTES": str(MAX_BYTES)}


def png(width: int = 640, height: int = 480, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def absolute(stack, url: str) -> str:
    """An S3 URL as it is; the local store's is a path on the gateway that gave it."""
    return url if url.startswith("http") else stack.http() + url


async def ask_upload(client, conversation: str, data_size: int, name: str = "photo.png", content_type: str = "image/png"):
    return await client.request({"op": "attachment.upload", "conversation": conversation, "name": name,
                                 "size": data_size, "content_type": content_type})


async def put(stack, grant: dict, data: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.put(absolute(stack, grant["url"]), content=data, headers=grant["headers"])


async def upload(stack, client, conversation: str, data: bytes, name: str = "photo.png", content_type: str = "image/png",
                 declared: int | None = None) -> str:
    """Upload ``data`` (declaring ``declared`` bytes, by default its size); returns the key."""
    grant = await ask_upload(client, conversation, len(data) if declared is None else declared, name, content_type)
    assert grant["expires_at_ms"] > time.time() * 1000
    response = await put(stack, grant, data)
    assert response.status_code == 200, response.text
    return grant["object"]


async def download(stack, client, key: str) -> httpx.Response:
    grant = await client.request({"op": "attachment.url", "object": key})
    assert grant["object"] == key and grant["expires_at_ms"] > time.time() * 1000
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(absolute(stack, grant["url"]))


# ----------------------------------------------------------------------------- end to end


async def test_an_image_arrives_with_its_size_and_thumbnail_and_members_download_both(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    data = png(640, 480)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob, gateway=1) as bob, \
            await connect(stack, users.mallory) as mallory:
        grant = await ask_upload(alice, conversation, len(data))
        assert grant["headers"] == {"Content-Type": "image/png", "If-None-Match": "*"}
        assert (await put(stack, grant, data)).status_code == 200
        key = grant["object"]
        parsed = objects.parse(key)
        assert parsed is not None and (parsed.uploader, parsed.conversation) == (users.alice, conversation)
        cmid = uuid.uuid4().hex
        sent = await alice.send({"to": users.bob, "type": "image", "body": {"object": key}}, cmid)
        push = await bob.next_message()
        body = push["message"]["body"]
        assert push["message"]["type"] == "image" and push["message"]["mid"] == sent["mid"]
        assert body == {"object": key, "name": "photo.png", "size": len(data), "content_type": "image/png",
                        "width": 640, "height": 480, "thumbnail": str(parsed.thumbnail_key())}
        again = await alice.send({"to": users.bob, "type": "image", "body": {"object": key}}, cmid)
        assert again["mid"] == sent["mid"], "a resend is the same message"
        other = b"\0" * len(data)  # other bytes of the signed length
        assert (await put(stack, grant, other)).status_code == 412, "what was checked and sent stays: written once"

        original = await download(stack, bob, key)
        assert original.status_code == 200 and original.content == data
        assert original.headers["content-type"] == "image/png"
        assert original.headers["content-disposition"].startswith("inline")
        thumbnail = await download(stack, bob, body["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumbnail.content)) as picture:
            assert picture.format == "JPEG" and picture.size == (320, 240)
        await refused(mallory.request({"op": "attachment.url", "object": key}), "not_found")
        history = await bob.history(conversation)
        assert [m["body"] for m in history["messages"]] == [body]


async def test_a_file_in_a_group_downloads_as_an_attachment_with_its_name(stack, users) -> None:
    data = "naïve café, 1,2,3\n".encode() * 100
    async with await connect(stack, users.ann) as ann, await connect(stack, users.ben, gateway=1) as ben:
        group = await ann.request({"op": "create_group", "name": "files", "members": [users.ben]})
        conversation = group["conversation"]
        key = await upload(stack, ann, conversation, data, "Résumé 2026.csv", "text/csv")
        await ann.send({"conversation": conversation, "type": "file", "body": {"object": key}})
        push = await ben.next_message()
        expected = {"object": key, "name": "Résumé 2026.csv", "size": len(data), "content_type": "text/csv"}
        assert push["message"]["body"] == expected
        got = await download(stack, ben, key)
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"].startswith("text/csv")
        disposition = got.headers["content-disposition"]
        assert disposition.startswith("attachment;") and "filename*=UTF-8''R%C3%A9sum%C3%A9%202026.csv" in disposition


# ----------------------------------------------------------------------------- refusals


async def test_every_refusal_changes_nothing(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob, \
            await connect(stack, users.carol) as carol:
        # at upload: too large, a type not allowed, not a member, bad fields
        await refused(ask_upload(alice, conversation, MAX_BYTES + 1), "attachment.too_large")
        await refused(ask_upload(alice, conversation, 10, "x.svg", "image/svg+xml"), "attachment.type_refused")
        await refused(ask_upload(carol, conversation, 10), "not_found")
        await refused(ask_upload(alice, f"p:{users.bob}:{users.alice}", 10), "bad_frame")  # the unsorted spelling
        await refused(ask_upload(alice, conversation, 0), "bad_frame")
        await refused(ask_upload(alice, conversation, 10, "a\nb"), "bad_frame")
        await refused(alice.request({"op": "attachment.url", "object": "../../etc/passwd"}), "bad_frame")

        async def send(client, to: str, key: str, kind: str = "image"):
            return await client.send({"to": to, "type": kind, "body": {"object": key}}, attempts=1)

        # at send: nothing uploaded, a key nobody gave, someone else's object, another conversation's
        never_put = (await ask_upload(alice, conversation, 100))["object"]
        await refused(send(alice, users.bob, never_put), "attachment.missing")
        made_up = str(objects.new_key(conversation, users.alice))
        await refused(send(alice, users.bob, made_up), "attachment.missing")
        bobs = await upload(stack, bob, conversation, png(20, 20))
        await refused(send(alice, users.bob, bobs), "attachment.not_yours")
        elsewhere = await upload(stack, alice, direct_conversation(users.alice, users.carol), png(20, 20))
        await refused(send(alice, users.bob, elsewhere), "attachment.not_yours")
        # the bytes are not what was declared: fewer, or more than the limit, or no image at all
        # (fewer bytes than declared: the upload URL fixes the length, the PUT itself is refused)
        grant = await ask_upload(alice, conversation, len(png(20, 20)) + 1)
        assert (await put(stack, grant, png(20, 20))).status_code == (400 if stack.kind == "embedded" else 403)
        short = grant["object"]
        await refused(send(alice, users.bob, short), "attachment.missing")
        grant = await ask_upload(alice, conversation, 1000, "big.bin", "application/octet-stream")
        response = await put(stack, grant, b"\0" * (MAX_BYTES + 1))
        # the local store refuses more than the limit; S3 any length but the one signed
        assert response.status_code == (413 if stack.kind == "embedded" else 403), response.text
        await refused(send(alice, users.bob, grant["object"], "file"), "attachment.missing")
        text = await upload(stack, alice, conversation, b"not a picture", "fake.png", "image/png")
        await refused(send(alice, users.bob, text), "attachment.type_refused")
        await refused(alice.send({"to": users.bob, "type": "image", "body": {"object": text, "size": 1}}), "bad_frame")

        # nothing stored, nothing delivered, nothing counted, nothing marked as sent
        assert (await alice.history(conversation))["messages"] == []
        assert (await bob.sync())["total_unread"] == 0
        for key in (never_put, short, text):  # an unsent upload is its uploader's alone
            await refused(bob.request({"op": "attachment.url", "object": key}), "attachment.missing")
        await refused(alice.request({"op": "attachment.url", "object": str(objects.parse(text).thumbnail_key())}),
                      "attachment.missing")  # no thumbnail was made of what is no image
        # and what was refused for a fault of its bytes goes through once they are right
        ok = await upload(stack, alice, conversation, png(30, 10))
        sent = await send(alice, users.bob, ok)
        assert sent["seq"] == 1
        assert (await bob.next_message())["message"]["body"]["width"] == 30


async def test_download_urls_expire_and_a_changed_one_is_refused(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice:
        key = await upload(stack, alice, conversation, b"hello", "a.txt", "text/plain")
        await alice.send({"to": users.bob, "type": "file", "body": {"object": key}})
        grant = await alice.request({"op": "attachment.url", "object": key})
        assert 3_500_000 < grant["expires_at_ms"] - time.time() * 1000 <= 3_600_000  # the default hour
    parsed = objects.parse(key)
    assert parsed is not None
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(absolute(stack, grant["url"]))).status_code == 200
        if stack.kind == "embedded":
            store = LocalStore(stack.folder, signing_secret(SECRET))
            past = await store.download_url(parsed, "text/plain", "attachment", int(time.time() * 1000) - 1)
            assert (await http.get(stack.http() + past.url)).status_code == 403
            other = grant["url"].replace("attachment%3B", "inline%3B")  # served inline instead: a changed URL
            assert other != grant["url"] and (await http.get(stack.http() + other)).status_code == 403
            return
        store = s3_store_of(stack)
        # valid 3 s: long enough that the first GET comes before it ends, even on a busy machine
        soon = await store.download_url(parsed, "text/plain", "attachment", int(time.time() * 1000) + 3000)
        assert (await http.get(soon.url)).status_code == 200

        async def refused_now() -> bool:
            return (await http.get(soon.url)).status_code == 403

        await eventually(refused_now, timeout=10)  # S3 checks X-Amz-Expires against its own clock


def s3_store_of(stack) -> S3Store:
    env = stack.env
    bucket = env["IMFLOW_ARCHIVE_DATA_PATH"].removeprefix("s3://").split("/", 1)[0]
    return S3Store.connect(env.get("IMFLOW_S3_ENDPOINT"), env.get("IMFLOW_S3_KEY_ID"), env.get("IMFLOW_S3_SECRET"),
                           env.get("IMFLOW_S3_REGION", "us-east-1"), env.get("IMFLOW_S3_USE_SSL", "").lower() == "true",
                           bucket, "attachments/")


# ----------------------------------------------------------------------------- the local store's URL check


FIELDS = ("key", "expires", "content_type", "disposition", "size", "signature")


@given(
    key=st.text(max_size=80), expires=st.integers(0, 2**53), content_type=st.text(max_size=40),
    disposition=st.text(max_size=80), size=st.text(max_size=12), method=st.sampled_from(["GET", "PUT"]),
    field=st.sampled_from([*FIELDS, "method", "secret"]), replacement=st.text(max_size=80),
)
def test_any_change_to_a_signed_local_url_is_refused(key, expires, content_type, disposition, size, method, field,
                                                     replacement) -> None:
    secret = signing_secret("x" * 40)
    signature = local_signature(secret, method, key, expires, content_type, disposition, size)
    query = {"key": key, "expires": str(expires), "content_type": content_type, "disposition": disposition,
             "size": size, "signature": signature}
    assert check_local_signature(secret, query, method, now_ms=expires - 1) is None
    assert check_local_signature(secret, query, method, now_ms=expires) == "expired"
    changed, changed_method, changed_secret = dict(query), method, secret
    if field == "method":
        changed_method = "PUT" if method == "GET" else "GET"
    elif field == "secret":
        changed_secret = signing_secret("y" * 40)
    else:
        if replacement == query[field]:
            replacement += "0"
        changed[field] = replacement
    # even an expiry spelled another way ("007" for 7, "7_0" for 70) is another URL
    assert check_local_signature(changed_secret, changed, changed_method, now_ms=0) == "bad signature"


# ----------------------------------------------------------------------------- images


def test_thumbnails_of_transparent_rotated_and_animated_images() -> None:
    transparent = images.examine(png(1000, 500, "RGBA"), 50_000_000, 320)
    assert (transparent.content_type, transparent.width, transparent.height) == ("image/png", 1000, 500)
    with Image.open(io.BytesIO(transparent.thumbnail)) as thumb:
        assert thumb.size == (320, 160) and thumb.mode == "RGB"

    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to show
    Image.new("RGB", (400, 200), "blue").save(rotated, "JPEG", exif=exif)
    upright = images.examine(rotated.getvalue(), 50_000_000, 100)
    assert (upright.width, upright.height) == (200, 400), "the size as shown, not as stored"

    animation = io.BytesIO()
    frames = [Image.new("P", (50, 40), i) for i in range(3)]
    frames[0].save(animation, "GIF", save_all=True, append_images=frames[1:])
    gif = images.examine(animation.getvalue(), 50_000_000, 320)
    assert (gif.content_type, gif.width, gif.height) == ("image/gif", 50, 40)

    for data, limit in [(b"GIF89a broken", 50_000_000), (png(100, 100), 9_999), (b"%PDF-1.7", 50_000_000)]:
        with pytest.raises(images.NotAnImage):
            images.examine(data, limit, 320)
    bmp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, "BMP")
    with pytest.raises(images.NotAnImage, match="BMP"):
        images.examine(bmp.getvalue(), 50_000_000, 320)


USER = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)


@given(a=USER, b=USER, gid=USER, uploader=USER, group=st.booleans())
def test_any_key_names_its_conversation_and_uploader(a: str, b: str, gid: str, uploader: str, group: bool) -> None:
    conversation = f"g:{gid}" if group else direct_conversation(a, b)
    key = objects.new_key(conversation, uploader)
    assert objects.parse(str(key)) == key and objects.parse(str(key.thumbnail_key())) == key.thumbnail_key()
    assert all(segment not in (".", "..") for segment in str(key).split("/"))


def test_keys_name_their_conversation_and_uploader_and_nothing_else_parses() -> None:
    key = objects.new_key("p:a.b:c-d", "..")
    assert objects.parse(str(key)) == key and str(key).startswith("att/p:a.b:c-d/")
    assert objects.parse(str(key.thumbnail_key())) == key.thumbnail_key() and key.thumbnail_key().original_key() == key
    unknown_kind = "att/x:y/" + "0" * 32 + "@u"
    for bad in (None, 7, "", "att/../x", f"{key}/..", str(key).replace("att/", "/att/"), str(key) + "\n", unknown_kind):
        assert objects.parse(bad) is None, bad
    folder = Path("/srv/attachments")
    assert LocalStore(folder, b"k").path(key).parent.parent == folder, "a file name of its hash, whatever the key"


# ----------------------------------------------------------------------------- review fixes (H7)


async def test_a_recalled_attachment_is_gone_its_object_thumbnail_and_urls(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob, gateway=1) as bob:
        key = await upload(stack, alice, conversation, png(64, 48))
        sent = await alice.send({"to": users.bob, "type": "image", "body": {"object": key}})
        thumbnail = (await bob.next_message())["message"]["body"]["thumbnail"]
        before = [await bob.request({"op": "attachment.url", "object": k}) for k in (key, thumbnail)]
        async with httpx.AsyncClient(timeout=10) as http:
            assert [(await http.get(absolute(stack, g["url"]))).status_code for g in before] == [200, 200]
            await alice.request({"op": "message.recall", "conversation": conversation, "seq": sent["seq"]})
            for who in (alice, bob):  # no new URL, for anyone
                for k in (key, thumbnail):
                    await refused(who.request({"op": "attachment.url", "object": k}), "attachment.recalled")
            # and the URLs given before answer nothing: the bytes are deleted
            assert [(await http.get(absolute(stack, g["url"]))).status_code for g in before] == [404, 404]
        # the object cannot be sent again either
        await refused(alice.send({"to": users.bob, "type": "image", "body": {"object": key}}, attempts=1),
                      "attachment.recalled")


async def test_no_upload_to_a_conversation_the_user_may_not_write_to(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob:
        assert (await ask_upload(alice, conversation, 10))["object"]  # before the block: fine
        await bob.request({"op": "block", "user": users.alice})
        await refused(ask_upload(alice, conversation, 10), "not_found")  # as the send would be refused
        await refused(ask_upload(bob, conversation, 10), "not_found")  # blocks hold either way
        await refused(alice.send_text(users.bob, "hi"), "blocked")
    private = direct_conversation(users.carol, users.dave)
    async with await connect(stack, users.carol) as carol, await connect(stack, users.dave) as dave:
        await dave.request({"op": "set_privacy", "dm": "contacts"})
        await refused(ask_upload(carol, private, 10), "not_found")  # dave takes messages from contacts only
        assert (await ask_upload(dave, private, 10))["object"], "dave may write to carol (she takes anyone's)"
        await dave.send_text(users.carol, "hello")  # and once he wrote first, carol may answer: bytes too
        assert (await ask_upload(carol, private, 10))["object"]


async def test_an_upload_url_takes_exactly_the_declared_size(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice:
        grant = await ask_upload(alice, conversation, 100, "a.txt", "text/plain")
        refusal = 400 if stack.kind == "embedded" else 403  # the local route's size check; S3's signed Content-Length
        for wrong in (b"x" * 50, b"x" * 150, b"x" * 3000):
            assert (await put(stack, grant, wrong)).status_code == refusal
        assert (await put(stack, grant, b"x" * 100)).status_code == 200
        await alice.send({"to": users.bob, "type": "file", "body": {"object": grant["object"]}})


# the local route, in process


def _route_app(store: LocalStore, max_uploads: int = 16):
    from starlette.applications import Starlette

    from imflow.plugins.attachments.routes import object_route

    return Starlette(routes=[object_route(lambda: store, lambda: MAX_BYTES, max_uploads)])


async def test_the_local_route_refuses_a_second_upload_before_reading_it_and_streams_to_disk(tmp_path) -> None:
    store = LocalStore(tmp_path, b"k" * 32)
    key = objects.new_key("p:a:b", "a")
    grant = await store.upload_url(key, "text/plain", 10, int(time.time() * 1000) + 60_000)
    transport = httpx.ASGITransport(app=_route_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        assert (await http.put(grant.url, content=b"x" * 10, headers=grant.headers)).status_code == 200
        read = 0

        async def body():
            nonlocal read
            for _ in range(50):
                read += 1
                yield b"y" * 10
        response = await http.put(grant.url, content=body(), headers={**grant.headers, "Content-Length": "10"})
        assert response.status_code == 412 and response.json()["code"] == "attachment.exists"
        assert read <= 1, "answered before the body was read"
        assert (await store.read(key, 100)) == b"x" * 10
        leftovers = [p.name for p in store.path(key).parent.iterdir() if p.name.startswith(".upload-")]
        assert leftovers == [], "no temporary file left behind"


async def test_the_local_route_takes_a_bounded_number_of_uploads_at_once(tmp_path) -> None:
    import asyncio

    store = LocalStore(tmp_path, b"k" * 32)
    keys = [objects.new_key("p:a:b", "a") for _ in range(2)]
    grants = [await store.upload_url(k, "text/plain", 4, int(time.time() * 1000) + 60_000) for k in keys]
    transport = httpx.ASGITransport(app=_route_app(store, max_uploads=1))
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow():
        yield b"ab"
        started.set()
        await finish.wait()
        yield b"cd"

    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        first = asyncio.create_task(http.put(grants[0].url, content=slow(), headers={**grants[0].headers, "Content-Length": "4"}))
        await asyncio.wait_for(started.wait(), 5)
        busy = await http.put(grants[1].url, content=b"abcd", headers=grants[1].headers)
        assert busy.status_code == 503 and busy.json()["code"] == "attachment.busy" and busy.headers["retry-after"]
        finish.set()
        assert (await first).status_code == 200
        assert (await http.put(grants[1].url, content=b"abcd", headers=grants[1].headers)).status_code == 200


async def test_s3_urls_are_presigned_off_the_event_loop_with_the_size_signed() -> None:
    import threading

    calls: list[tuple[str, dict, bool]] = []

    class Presigner:
        def generate_presigned_url(self, operation, Params, ExpiresIn):  # botocore calls it with these names
            calls.append((operation, Params, threading.current_thread() is threading.main_thread()))
            return "https://s3.example/x"

    store = S3Store(None, Presigner(), "bucket", "attachments/")
    key = objects.new_key("p:a:b", "a")
    await store.upload_url(key, "text/plain", 1234, int(time.time() * 1000) + 60_000)
    await store.download_url(key, "text/plain", "attachment", int(time.time() * 1000) + 60_000)
    assert [on_loop for *_, on_loop in calls] == [False, False], "botocore may block (credentials): never on the loop"
    assert calls[0][1]["ContentLength"] == 1234


# images: bombs


def test_an_image_bomb_is_refused_by_default_and_images_decode_a_few_at_a_time() -> None:
    from imflow.plugins.attachments import AttachmentSettings

    out = io.BytesIO()
    Image.new("P", (7000, 7000), 0).save(out, "PNG", optimize=True)  # ~50 KB, 49 million pixels
    assert len(out.getvalue()) < 100_000
    limit = AttachmentSettings().max_image_pixels
    assert 16_000_000 <= limit <= 24_000_000
    with pytest.raises(images.NotAnImage, match="pixels"):
        images.examine(out.getvalue(), limit, 320)


async def test_images_are_decoded_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    from imflow.plugins.attachments import Attachments

    running, most, lock = 0, 0, threading.Lock()

    def examine(data: bytes, max_pixels: int, edge: int) -> images.Picture:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.1)  # the decoding's CPU time
        with lock:
            running -= 1
        return images.Picture("image/png", 1, 1, b"")

    class Store:
        async def read(self, key, limit):
            return b"png"

        async def write(self, key, data, content_type):
            return None

    monkeypatch.setattr(images, "examine", examine)
    plugin = Attachments()
    plugin.store = Store()  # type: ignore[assignment]
    found = await asyncio.gather(*(plugin._examine(objects.new_key("p:a:b", "a"), 100) for _ in range(8)))
    assert all(isinstance(f, dict) for f in found)
    assert most <= plugin.settings.image_workers == 2


# uploads never sent


async def test_uploads_never_sent_are_reclaimed_and_sent_ones_kept(tmp_path) -> None:
    from imflow.core.storage import redis_client
    from imflow.plugins.attachments import UNSENT, Attachments, reclaim

    redis = redis_client.connect(None)  # fakeredis: the test's own
    store = LocalStore(tmp_path, b"k" * 32)
    old, sent, fresh = (objects.new_key("p:a:b", "a") for _ in range(3))
    for key in (old, sent, fresh):
        await store.write(key, b"bytes")
    await store.write(old.thumbnail_key(), b"thumb")
    await redis.zadd(UNSENT, {str(old): 1_000, str(fresh): 9_000})  # `sent` was taken out by its send
    assert await reclaim(redis, store, before_ms=5_000) == 1
    assert [await store.size(k) for k in (old, old.thumbnail_key(), sent, fresh)] == [None, None, 5, 5]
    assert await redis.zrange(UNSENT, 0, -1) == [str(fresh).encode()]
    assert await reclaim(redis, store, before_ms=5_000) == 0, "idempotent"
    timers = Attachments().imflow_stream_agents()
    assert [t.name for t in timers] == ["attachments.reclaim"] and timers[0].interval(None) == 600
    await redis.aclose()
