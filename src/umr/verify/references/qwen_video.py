"""Qwen3-VL-Embedding's video path as its authors' code runs it, transcribed literally, one item at
a time: ``Qwen3VLEmbedder.format_model_input``; qwen-vl-utils 0.0.14's ``fetch_video`` (every
frame decoded in presentation order as decord presents them, here by PyAV; ``smart_nframes``;
``torch.linspace(...).round()``; torchvision's resize of a uint8 tensor; frame lists through
``fetch_image`` at factor 64, padded to an even count, 2 frames per second); transformers
4.57.3's video processor (fused normalisation, patches) and processor (one ``<t seconds>`` block
per frame pair, truncation and its check of the video tokens); then transformers' own
``Qwen3VLModel``. umr's path (seeking decoder, planner, packed decoder) shares none of it. The
official embedder itself was run once on the clips of ``tests/fixtures/video`` (its vectors are
stored there), and the tests hold umr to both.
"""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import torch

from ...core.items import Item
from .qwen_vl import QWEN3VL_DEFAULT_INSTRUCTION, Qwen3VLReference, qwen_vl_utils_fetch_image, smart_resize

FACTOR = 32


def _smart_resize(height, width, factor, min_pixels, max_pixels):
    """qwen-vl-utils' ``smart_resize`` with its aspect-ratio check."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def decode_all(path):
    """Every frame in presentation order and the average rate: what decord shows of a file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames), fps


def smart_nframes(ele, total_frames, video_fps):
    fps = ele.get("fps", 2.0)
    min_frames = math.ceil(4 / 2) * 2
    max_frames = math.floor(ele.get("max_frames", min(768, total_frames)) / 2) * 2
    nframes = total_frames / video_fps * fps
    nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
    nframes = math.floor(nframes / 2) * 2
    if not 2 <= nframes <= total_frames:
        raise ValueError(f"nframes should in interval [2, {total_frames}], but got {nframes}.")
    return nframes


def calculate_video_frame_range(ele, total_frames, video_fps):
    """qwen-vl-utils 0.0.14's time range (``video_start`` / ``video_end``, seconds) as frames."""
    video_start, video_end = ele.get("video_start"), ele.get("video_end")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start_frame = math.ceil(max(0.0, min(video_start, max_duration)) * video_fps) if video_start is not None else 0
    if video_end is not None:
        end_frame = min(math.floor(max(0.0, min(video_end, max_duration)) * video_fps), total_frames - 1)
    else:
        end_frame = total_frames - 1
    if start_frame >= end_frame:
        raise ValueError("Invalid time range")
    return start_frame, end_frame, end_frame - start_frame + 1


def torchvision_resize(video, size):
    """``torchvision.transforms.functional.resize(uint8 tensor, size, BICUBIC, antialias=True)``."""
    if list(video.shape[-2:]) == list(size):
        return video
    out = torch.nn.functional.interpolate(video.float(), size=size, mode="bicubic", align_corners=False,
                                          antialias=True)
    return out.clamp(min=0, max=255).round().to(torch.uint8)


def fetch_video(ele):
    if isinstance(ele["video"], str):
        frames, video_fps = decode_all(ele["video"])
        first, last, total = calculate_video_frame_range(ele, len(frames), video_fps)
        nframes = smart_nframes(ele, total_frames=total, video_fps=video_fps)
        idx = torch.linspace(first, last, nframes).round().long().tolist()
        video = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2)
        metadata = {"fps": video_fps, "frames_indices": idx}
    else:
        images = [qwen_vl_utils_fetch_image(frame, factor=64, min_pixels=4 * 64 * 64, max_pixels=16384 * 64 * 64) for frame in ele["video"]]
        nframes = math.ceil(len(images) / 2) * 2
        images.extend([images[-1]] * (nframes - len(images)))
        video = torch.stack([torch.from_numpy(np.array(image).transpose(2, 0, 1)) for image in images])
        metadata = {"fps": 2.0, "frames_indices": list(range(len(video)))}
    nframes, _, height, width = video.shape
    min_pixels = 128 * FACTOR * FACTOR
    total_pixels = ele.get("total_pixels", 128000 * FACTOR * FACTOR * 0.9)
    max_pixels = max(min(768 * FACTOR * FACTOR, total_pixels / nframes * 2), int(min_pixels * 1.05))
    if "resized_height" in ele and "resized_width" in ele:
        h, w = _smart_resize(ele["resized_height"], ele["resized_width"], FACTOR, 4 * 32 * 32, 16384 * 32 * 32)
    else:
        h, w = _smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return torchvision_resize(video, [h, w]).float(), metadata


class Qwen3VLVideoReference:
    """Qwen3VLEmbedder on one item with a video (and maybe text), as it runs with transformers 4.57.3.
    ``model``: a ``Qwen3VLModel`` already loaded from ``folder`` (else it is loaded here)."""

    def __init__(self, folder, *, max_length=8192, fps=1, max_frames=64, model=None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoModel, AutoTokenizer

        self.model = model if model is not None else \
            AutoModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.template = (Path(folder) / "chat_template.jinja").read_text()
        config = json.loads((Path(folder) / "preprocessor_config.json").read_text())
        self.mean, self.std = config["image_mean"], config["image_std"]
        self.max_length, self.fps, self.max_frames = max_length, fps, max_frames
        self.video_id = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")

    def conversation(self, text, video, instruction, fps, max_frames, extra):
        if instruction:
            instruction = instruction.strip()
            if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
                instruction = instruction + "."
        if isinstance(video, list):
            if len(video) > self.max_frames:  # sample_frames
                video = [video[i] for i in np.linspace(0, len(video) - 1, self.max_frames, dtype=int).tolist()]
            ele = {"type": "video", "video": video, "total_pixels": 10 * 768 * 32 * 32}
        else:
            ele = {"type": "video", "video": str(video), "fps": fps or self.fps,
                   "max_frames": max_frames or self.max_frames}
        content = [{**ele, **extra}] + ([{"type": "text", "text": text}] if text is not None else [])
        return [{"role": "system", "content": [{"type": "text", "text": instruction or QWEN3VL_DEFAULT_INSTRUCTION}]},
                {"role": "user", "content": content}]

    def inputs(self, text=None, video=None, instruction=None, fps=None, max_frames=None, **extra):
        conversation = self.conversation(text, video, instruction, fps, max_frames, extra)
        prompt = self.tokenizer.apply_chat_template(conversation, chat_template=self.template, tokenize=False,
                                                    add_generation_prompt=True)
        clip, metadata = fetch_video(conversation[1]["content"][0])
        # the video processor: fused rescale and normalisation, then patches of 2 frames
        mean = torch.tensor(self.mean) * (1.0 / (1 / 255))
        std = torch.tensor(self.std) * (1.0 / (1 / 255))
        patches = ((clip.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))[None]
        batch, grid_t, channel = patches.shape[:3]
        grid_t //= 2
        grid_h, grid_w = clip.shape[2] // 16, clip.shape[3] // 16
        patches = patches.view(batch, grid_t, 2, channel, grid_h // 2, 2, 16, grid_w // 2, 2, 16)
        patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        pixels = patches.reshape(batch * grid_t * grid_h * grid_w, channel * 2 * 16 * 16)
        # the processor: timestamps, one block per temporal patch
        indices = list(metadata["frames_indices"])
        if len(indices) % 2:
            indices.append(indices[-1])
        seconds = [i / metadata["fps"] for i in indices]
        stamps = [(seconds[i] + seconds[i + 1]) / 2 for i in range(0, len(seconds), 2)]
        placeholder = "".join(f"<{stamps[k]:.1f} seconds><|vision_start|>" + "<|placeholder|>" * (grid_h * grid_w // 4)
                              + "<|vision_end|>" for k in range(grid_t))
        prompt = prompt.replace("<|vision_start|><|video_pad|><|vision_end|>", placeholder, 1)
        prompt = prompt.replace("<|placeholder|>", "<|video_pad|>")
        encoded = self.tokenizer([prompt], truncation=True, max_length=self.max_length, return_tensors="pt")
        if int((encoded["input_ids"] == self.video_id).sum()) != prompt.count("<|video_pad|>"):
            raise ValueError("Mismatch in `video` token count between text and `input_ids`")
        return encoded, pixels, [grid_t, grid_h, grid_w], stamps

    @torch.no_grad()
    def embed(self, **kwargs) -> np.ndarray:
        encoded, pixels, grid, _ = self.inputs(**kwargs)
        ids = encoded["input_ids"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=encoded["attention_mask"].to(self.device),
                            pixel_values_videos=pixels.to(self.device, self.dtype),
                            video_grid_thw=torch.tensor([grid], device=self.device),
                            mm_token_type_ids=(ids == self.video_id).int() * 2).last_hidden_state
        return torch.nn.functional.normalize(hidden[0, -1].float(), dim=-1).cpu().numpy()

    def embed_item(self, item: Item, **extra) -> np.ndarray:
        """``extra``: more keys of the video element (``resized_height``, ``max_frames``, ...)."""
        video = list(item.video) if isinstance(item.video, tuple) else item.video
        span = {k: v for k, v in (("video_start", item.video_start), ("video_end", item.video_end)) if v is not None}
        return self.embed(**{"text": item.text, "video": video, "fps": item.fps, "max_frames": item.max_frames,
                             "instruction": item.instruction if item.is_query else None, **span, **extra})


class Qwen3VLWithVideoReference(Qwen3VLReference):
    """:class:`Qwen3VLReference` for texts and images, :class:`Qwen3VLVideoReference` (on the same
    model, at Qwen3VLEmbedder's defaults: 1 frame per second, at most 64 frames) for videos."""

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(folder, device=device, dtype=dtype)
        self.videos = Qwen3VLVideoReference(folder, max_length=self.max_length, model=self.model, device=device,
                                            dtype=dtype)

    def embed(self, item: Item) -> np.ndarray:
        return self.videos.embed_item(item) if item.video is not None else super().embed(item)
