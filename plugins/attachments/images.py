"""Images with Pillow: what an upload really is, its size in pixels, and its thumbnail.

Pillow reads the header first (``Image.open`` is lazy), so an image too large in pixels is
refused before it is decoded; the decoding itself runs in a thread (CPU, not the event loop).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# what a browser shows inline; anything else Pillow can read is refused as an image (send it as a file)
SHOWN = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


class NotAnImage(ValueError):
    """The bytes are no image a browser shows, or too large in pixels to decode."""


@dataclass(frozen=True)
class Picture:
    """An image as the server records it: its real content type and size in pixels, and a JPEG
    thumbnail (at most ``edge`` pixels on its longer side)."""

    content_type: str
    width: int
    height: int
    thumbnail: bytes


# EXIF orientation -> the transpose that shows the image as the camera meant it (ImageOps.exif_transpose's table)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def examine(data: bytes, max_pixels: int, edge: int) -> Picture:
    """The ``Picture`` of ``data``; raises NotAnImage when it is not one of SHOWN's formats, is
    larger than ``max_pixels``, or does not decode. Blocking and CPU-bound: call it in a thread,
    a few at a time (the plugin holds a semaphore).

    Memory stays near one decoded copy of the image at its stored mode (bytes per pixel: 1 for a
    palette, 3-4 for colour): a JPEG is decoded at the smallest scale (1/2…1/8) still larger than
    the thumbnail (``draft``), and the image is shrunk before any conversion or rotation, which
    then work on the thumbnail only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = SHOWN.get(image.format or "")
            if kind is None:
                raise NotAnImage(f"not an image a browser shows ({image.format or 'unknown format'})")
            width, height = image.size
            if width * height > max_pixels:
                raise NotAnImage(f"{width}x{height} pixels is more than {max_pixels}")
            image.seek(0)  # an animation's first frame
            turn = _UPRIGHT.get(image.getexif().get(0x0112, 1))
            if turn in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                        Image.Transpose.ROTATE_90):
                width, height = height, width  # the size as shown
            image.draft("RGB", (edge, edge))  # JPEG: decode at a fraction of its size; others: nothing
            image.thumbnail((edge, edge))  # shrunk first (a palette image by nearest neighbour)...
            thumb: Image.Image = image
            if thumb.mode in ("P", "LA", "PA"):  # ...then converted and rotated, small
                thumb = thumb.convert("RGBA")
            if turn is not None:
                thumb = thumb.transpose(turn)
            if thumb.mode in ("RGBA", "LA"):  # JPEG has no transparency: flatten on white
                flat = Image.new("RGB", thumb.size, "white")
                flat.paste(thumb, mask=thumb.getchannel("A"))
                thumb = flat
            elif thumb.mode != "RGB":
                thumb = thumb.convert("RGB")
            out = io.BytesIO()
            thumb.save(out, "JPEG", quality=80, optimize=True)
    except NotAnImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # what a broken file raises
        raise NotAnImage(f"the image does not decode: {error}") from error
    return Picture(kind, width, height, out.getvalue())
