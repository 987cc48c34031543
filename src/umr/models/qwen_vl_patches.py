"""Image sizes and patches as the Qwen-VL image processors compute them, shared by GME (Qwen2-VL) and Qwen3-VL.

Both cut a resized RGB image into ``patch x patch`` cells grouped by ``merge x merge`` window,
repeat the single frame over ``temporal_patch_size``, and normalise through the processor's
arithmetic: a float64 rescale cast to float32, then float32 ``(x - mean) / std``. Done through
a 256-entry lookup table per channel, the patches equal transformers' bit for bit.

Video frames (:class:`VideoPatchCutter`) are cut the same way, ``temporal_patch_size``
consecutive frames per patch, normalised as the video processor does it (mean and std scaled by
``1 / rescale_factor``, then float32 ``(x - mean) / std``); :func:`resize_frames` resizes frames
as qwen-vl-utils resizes video (torchvision's bicubic, antialiased, on uint8).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image


#: the image settings a Qwen-VL ``preprocessor_config.json`` carries that :class:`PatchCutter` takes
PATCH_SETTINGS = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor")


def read_patch_settings(folder: Path, name: str = "preprocessor_config.json") -> dict[str, Any]:
    """The :data:`PATCH_SETTINGS` a checkpoint folder's ``preprocessor_config.json`` (or ``name``)
    sets (none without one)."""
    config_file = folder / name
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    return {key: config[key] for key in PATCH_SETTINGS if config.get(key) is not None}


class PatchCutter:
    """``cutter(image) -> (patches (grid_h * grid_w, 3 * T * P * P), grid (1, grid_h, grid_w))``.

    ``fused``: normalise as transformers' torchvision backend does, rescale folded into mean and
    std (``(x - mean / rescale) / (std / rescale)`` in float32) instead of the PIL backend's
    rescale-then-normalise; the two differ in the last bit of some values.
    """

    def __init__(self, *, patch_size: int, merge_size: int, temporal_patch_size: int,
                 image_mean: Sequence[float], image_std: Sequence[float], rescale_factor: float,
                 fused: bool = False):
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        if fused:
            import torch

            mean = (torch.tensor(image_mean) * (1.0 / rescale_factor)).numpy()  # float32, as transformers rounds
            std = (torch.tensor(image_std) * (1.0 / rescale_factor)).numpy()
            scaled = np.arange(256, dtype=np.float32)
        else:
            mean = np.asarray(image_mean, dtype=np.float32)
            std = np.asarray(image_std, dtype=np.float32)
            scaled = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
        self._lut = ((scaled[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)  # (3, 256)

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3), sides multiples of patch x merge
        height, width, _ = pixels.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = height // p, width // p
        # (gh/m, m, p, gw/m, m, p, C) -> (gh/m, gw/m, m, m, C, p, p): each merge group contiguous
        cells = pixels.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        cells = np.ascontiguousarray(cells).reshape(gh * gw, 3, 1, p * p)
        normed = np.empty((gh * gw, 3, t, p * p), dtype=np.float32)
        for c in range(3):
            normed[:, c, :, :] = self._lut[c][cells[:, c]]  # one frame repeated over time
        return normed.reshape(gh * gw, 3 * t * p * p), (1, gh, gw)


class VideoPatchCutter:
    """``cutter(frames) -> (patches (t * grid_h * grid_w, 3 * T * P * P), grid (t, grid_h, grid_w))``
    for ``frames`` ``(n, H, W, 3)`` uint8, ``n`` a multiple of the temporal patch ``T`` and ``t = n / T``.

    The normalisation is the video processor's fused one, computed as it computes it (mean and
    std tensors scaled by ``1 / rescale_factor`` in float32, then ``(x - mean) / std``).
    """

    def __init__(self, *, patch_size: int, merge_size: int, temporal_patch_size: int,
                 image_mean: Sequence[float], image_std: Sequence[float], rescale_factor: float):
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        mean = torch.tensor(list(image_mean)) * (1.0 / rescale_factor)
        std = torch.tensor(list(image_std)) * (1.0 / rescale_factor)
        values = torch.arange(256, dtype=torch.float32)
        self._lut = ((values[None, :] - mean[:, None]) / std[:, None]).numpy()  # (3, 256) float32

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        n, height, width, _ = frames.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        if n % t:
            raise ValueError(f"{n} frames are not a multiple of the temporal patch size {t}")
        gt, gh, gw = n // t, height // p, width // p
        # (gt, T, gh/m, m, p, gw/m, m, p, C) -> (gt, gh/m, gw/m, m, m, C, T, p, p)
        cells = frames.reshape(gt, t, gh // m, m, p, gw // m, m, p, 3).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
        cells = np.ascontiguousarray(cells).reshape(gt * gh * gw, 3, t * p * p)
        normed = np.empty(cells.shape, dtype=np.float32)
        for c in range(3):
            normed[:, c] = self._lut[c][cells[:, c]]
        return normed.reshape(gt * gh * gw, 3 * t * p * p), (gt, gh, gw)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 frames at ``height x width`` as torchvision's ``resize`` makes them from
    a uint8 tensor (what qwen-vl-utils calls on video): unchanged at their own size, else float32
    bicubic interpolation with antialiasing, clamped, rounded, back to uint8. A batch gives each
    frame's very pixels, several times faster than frame by frame (the filter weights are
    computed once per call)."""
    if frames.shape[1:3] == (height, width):
        return frames
    # channels first and contiguous (a copy: frames of PIL images are read-only); channels-last
    # input takes a slower kernel
    pixels = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()
    resized = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False,
                                              antialias=True)
    return resized.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class QwenVLImageSettings:
    """What GME's and Qwen3-VL's processors share: image token bounds checked once, the
    patch layout, pixel bounds and the :class:`PatchCutter`. ``pixels_per_token_side`` is the
    side of the square a token's pixel bound counts (GME's own 28, whatever its patch size;
    by default the resize factor, ``patch_size * merge_size``, as Qwen3-VL counts)."""

    def __init__(self, *, min_image_tokens: int, max_image_tokens: int, max_length: int, patch_size: int,
                 merge_size: int, temporal_patch_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], rescale_factor: float, pixels_per_token_side: int | None = None):
        if not 1 <= int(min_image_tokens) <= int(max_image_tokens):
            raise ValueError(f"need 1 <= min_image_tokens <= max_image_tokens, got {min_image_tokens} "
                             f"and {max_image_tokens}")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.min_image_tokens = int(min_image_tokens)
        self.max_image_tokens = int(max_image_tokens)
        self.max_length = int(max_length)
        self.patch_size = int(patch_size)
        self.merge_size = int(merge_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.factor = self.patch_size * self.merge_size
        side = pixels_per_token_side or self.factor
        self.min_pixels = self.min_image_tokens * side * side
        self.max_pixels = self.max_image_tokens * side * side
        self.cut_patches = PatchCutter(patch_size=self.patch_size, merge_size=self.merge_size,
                                       temporal_patch_size=self.temporal_patch_size, image_mean=image_mean,
                                       image_std=image_std, rescale_factor=rescale_factor)


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int,
                 extreme_ratio: Literal["refuse", "clamp"] = "refuse", floor_at_factor: bool = True,
                 on_clamp: Callable[[float], None] | None = None, max_ratio: int = 200,
                 round_to_zero: bool = False) -> tuple[int, int]:
    """(height, width) as the Qwen-VL resizes compute it: multiples of ``factor``, area in bounds.

    The variants differ only in what they do past ``max_ratio``: the image processors and
    ``qwen_vl_utils.smart_resize`` refuse the image (``ValueError``, checked on the input), GME's
    ``fetch_image`` copy clamps the long side of the resized image (``on_clamp`` hears the ratio).
    ``floor_at_factor`` keeps a side shrunk to fit ``max_pixels`` at least one ``factor`` (the
    image processors do; ``qwen_vl_utils`` floors it to 0 for a tiny ``max_pixels``).
    ``round_to_zero``: a side under half a factor first rounds to 0, as transformers' image
    processors round it (``qwen_vl_utils`` rounds it up to one factor); this matters only when
    the image then exceeds ``max_pixels`` one way and not the other.
    """
    if extreme_ratio == "refuse" and max(height, width) / min(height, width) > max_ratio:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over {max_ratio}")
    floor = factor if floor_at_factor else 0
    least = 0 if round_to_zero else factor
    h_bar = max(least, round(height / factor) * factor)
    w_bar = max(least, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(floor, math.floor(height / beta / factor) * factor)
        w_bar = max(floor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if extreme_ratio == "clamp" and max(h_bar, w_bar) / min(h_bar, w_bar) > max_ratio:
        if on_clamp is not None:
            on_clamp(max(h_bar, w_bar) / min(h_bar, w_bar))
        if h_bar > w_bar:
            h_bar = w_bar * max_ratio
        else:
            w_bar = h_bar * max_ratio
    return h_bar, w_bar
