"""umr.core.images: safe decoding, header-only sizes, and one clear reason for every bad image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from umr.core.images import MAX_IMAGE_PIXELS, image_size, load_image
from umr.core.items import ItemError


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def rgb():
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_modes_convert_to_rgb_like_pil(tmp_path, rgb, mode):
    image = rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    loaded = load_image(path, item_id="a")
    assert loaded.mode == "RGB" and loaded.size == (60, 40)
    with Image.open(path) as expected:
        assert np.array_equal(np.asarray(loaded), np.asarray(expected.convert("RGB")))


def test_rgba_alpha_is_dropped_not_composited(rgb):
    image = rgb.convert("RGBA")
    image.putalpha(0)
    assert np.array_equal(np.asarray(load_image(image)), np.asarray(rgb))


def test_sources_path_str_bytes_pil(tmp_path, rgb):
    path = tmp_path / "x.png"
    rgb.save(path)
    data = path.read_bytes()
    for source in (path, str(path), data, rgb):
        assert image_size(source) == (60, 40)
        assert np.array_equal(np.asarray(load_image(source)), np.asarray(rgb))


def test_jpeg_and_webp(tmp_path, rgb):
    for fmt in ("JPEG", "WEBP"):
        data = _png_bytes(rgb, fmt)
        assert load_image(data).size == (60, 40)


def test_tiny_and_extreme_sizes():
    for w, h in [(1, 1), (17, 5), (900, 30), (3, 2000)]:
        image = Image.new("RGB", (w, h), (1, 2, 3))
        assert image_size(_png_bytes(image)) == (w, h)
        assert load_image(_png_bytes(image)).size == (w, h)


def test_missing_file(tmp_path):
    with pytest.raises(ItemError) as info:
        load_image(tmp_path / "nope.png", item_id="m")
    assert info.value.item_id == "m" and "not found" in info.value.reason
    with pytest.raises(ItemError, match="not found"):
        image_size(str(tmp_path / "nope.png"), item_id="m")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ItemError, match="folder"):
        load_image(tmp_path, item_id="d")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture\n")
    with pytest.raises(ItemError, match="not an image"):
        image_size(path, item_id="t")
    with pytest.raises(ItemError, match="not an image"):
        load_image(b"\x00\x01garbage", item_id="t")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ItemError):
        load_image(path, item_id="e")


def test_truncated_file_fails_at_decode_not_header(tmp_path, rgb):
    big = Image.fromarray(np.random.RandomState(1).randint(0, 256, (300, 300, 3), dtype=np.uint8), "RGB")
    data = _png_bytes(big)
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 3])
    assert image_size(path) == (300, 300)  # the header is intact
    with pytest.raises(ItemError) as info:
        load_image(path, item_id="cut")
    assert "cannot be decoded" in info.value.reason and info.value.item_id == "cut"


def test_truncated_jpeg(tmp_path, rgb):
    data = _png_bytes(rgb.resize((300, 200)), "JPEG")
    with pytest.raises(ItemError):
        load_image(data[: len(data) // 2], item_id="j")


def test_decompression_bomb_refused_from_header(bomb_png):
    assert bomb_png.stat().st_size < 200
    for fn in (image_size, load_image):
        with pytest.raises(ItemError) as info:
            fn(bomb_png, item_id="bomb")
        assert "bomb" in info.value.reason and info.value.item_id == "bomb"


@pytest.fixture
def claim(bomb_png):
    """Rewrite the bomb's header to claim other sizes (IHDR width/height + CRC)."""
    import struct
    import zlib

    def make(width: int, height: int) -> bytes:
        data = bytearray(bomb_png.read_bytes())
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        data[16:29] = ihdr
        data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
        return bytes(data)

    return make


def test_pixel_limit_is_the_one_in_force(claim, recwarn):
    with pytest.raises(ItemError, match="over the limit"):
        image_size(claim(12000, 12000), item_id="x", max_pixels=100_000_000)
    # between PIL's warning size and the hard limit: accepted quietly
    assert image_size(claim(13000, 13000)) == (13000, 13000)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
    assert MAX_IMAGE_PIXELS < 14000 * 14000  # the documented default is what really holds
    with pytest.raises(ItemError, match="over the limit|bomb"):
        image_size(claim(14000, 14000), item_id="x")


def test_zero_size_header(claim):
    with pytest.raises(ItemError):
        image_size(claim(0, 10), item_id="z")


def test_pil_input_is_not_mutated(rgb):
    image = rgb.convert("P")
    load_image(image)
    assert image.mode == "P"


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)  # 0..65532
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (64, 256, 3) and (rgb[..., 0] == rgb[..., 1]).all()
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01


def test_float_images_in_unit_range_are_intensities():
    values = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    rgb = np.asarray(load_image(Image.fromarray(values, "F")))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
