"""A generated zoo of odd image files: every PIL mode, wide samples, animations, broken files.

``write_zoo(folder)`` writes them and returns ``{file name: expected}``, where ``expected`` is
"ok" (a model that sees pixels must embed it) or "error" (it must be reported as that file's
error, with a one-line reason). Nothing may be lost and nothing may stop a run.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, row: bytes) -> bytes:
    """A grayscale PNG of ``width x height`` whose rows all equal ``row``, compressed to a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress((b"\x00" + row) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")


def _save(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def _jpeg_with_app1(payload: bytes) -> bytes:
    """A JPEG with an extra APP1 (EXIF) segment right after SOI."""
    jpeg = _save(_noise(40, 30, 7), format="JPEG")
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def write_zoo(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = _noise(48, 36, 1)
    gray = base.convert("L")
    wide16 = Image.fromarray((np.linspace(0, 65535, 48 * 36).reshape(36, 48)).astype(np.uint16))
    files: dict[str, tuple[bytes, str]] = {}

    # every PIL mode
    files["mode-1.png"] = (_save(base.convert("1"), format="PNG"), "ok")
    files["mode-L.png"] = (_save(gray, format="PNG"), "ok")
    files["mode-LA.png"] = (_save(base.convert("LA"), format="PNG"), "ok")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files["mode-P-transparent.png"] = (_save(palette, format="PNG", transparency=0), "ok")
    files["mode-P-transparent.gif"] = (_save(palette, format="GIF", transparency=3), "ok")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    files["mode-RGBA.png"] = (_save(rgba, format="PNG"), "ok")
    files["mode-CMYK.jpg"] = (_save(base.convert("CMYK"), format="JPEG"), "ok")
    files["mode-CMYK.tiff"] = (_save(base.convert("CMYK"), format="TIFF"), "ok")
    files["mode-YCbCr.tiff"] = (_save(base.convert("YCbCr"), format="TIFF"), "ok")
    files["mode-I16.png"] = (_save(wide16, format="PNG"), "ok")
    files["mode-I16.tiff"] = (_save(wide16, format="TIFF"), "ok")
    files["mode-I.tiff"] = (_save(wide16.convert("I"), format="TIFF"), "ok")
    files["mode-F.tiff"] = (_save(Image.fromarray(np.linspace(0, 1, 48 * 36, dtype=np.float32).reshape(36, 48)),
                                  format="TIFF"), "ok")
    files["mode-RGB-16bit.png"] = (_png_rgb16(), "ok")
    # more than one frame
    frames = [_noise(32, 24, seed).convert("P") for seed in range(3)]
    files["animated.gif"] = (_save(frames[0], format="GIF", save_all=True, append_images=frames[1:]), "ok")
    files["multipage.tiff"] = (_save(frames[0].convert("RGB"), format="TIFF", save_all=True,
                                     append_images=[f.convert("RGB") for f in frames[1:]]), "ok")
    files["animated.png"] = (_save(frames[0].convert("RGB"), format="PNG", save_all=True,
                                   append_images=[f.convert("RGB") for f in frames[1:]]), "ok")
    # metadata that lies
    files["exif-garbage.jpg"] = (_jpeg_with_app1(b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8), "ok")
    files["exif-bad-offsets.jpg"] = (_jpeg_with_app1(b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFF0)
                                                     + b"\x00" * 16), "ok")
    # extreme geometries (compressed to a few bytes each)
    files["one-pixel.png"] = (_png(1, 1, b"\x80"), "ok")
    files["row-1x4000.png"] = (_png(4000, 1, bytes(range(256)) * 15 + bytes(160)), "ok")
    files["column-4000x1.png"] = (_png(1, 4000, b"\x40"), "ok")
    files["row-1x600000.png"] = (_png(600_000, 1, bytes(600_000)), "ok")  # GME's resize divided by 0 here
    files["column-600000x1.png"] = (_png(1, 600_000, b"\xc0"), "ok")
    # wrong extensions
    files["png-named.jpg"] = (_save(base, format="PNG"), "ok")
    files["jpeg-named.png"] = (_save(base, format="JPEG"), "ok")
    files["text-named.png"] = (b"this is not an image at all\n", "error")
    # broken files
    files["zero-bytes.png"] = (b"", "error")
    full_png = _save(_noise(64, 64, 3), format="PNG")
    files["truncated.png"] = (full_png[: len(full_png) // 2], "error")
    full_jpeg = _save(_noise(64, 64, 4), format="JPEG")
    files["truncated.jpg"] = (full_jpeg[: len(full_jpeg) // 2], "error")
    files["header-only.gif"] = (_save(palette, format="GIF")[:13], "error")
    # decompression bombs: headers that claim more pixels than PIL allows
    bomb = bytearray(_png(30000, 30000, b"")[:33])
    files["bomb.png"] = (bytes(bomb) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""), "error")
    gif = bytearray(_save(palette, format="GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen 65535 x 65535 (PIL's size)
    files["bomb.gif"] = (bytes(gif), "error")

    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def _png_rgb16() -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one; written by hand)."""
    width, height = 20, 10
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"".join(struct.pack(">HHH", x * 3000, y * 6000, 65535 - x * 3000)
                                       for x in range(width)) for y in range(height))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
