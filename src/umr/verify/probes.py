"""The probe set ``umr verify`` embeds both ways: each kind of input a model meets in use.

The probes are generated (seeded), so two runs and two machines compare the same inputs. They
cover what implementations of one model most often disagree on: the prompt (queries with and
without an instruction, candidates), truncation (a text longer than the model's window), image
decoding (every 8-bit PIL mode, alpha, odd and large sizes) and fused text + image items, plus a
PDF page rendered the way ``umr index`` renders one; generated video clips (two codecs, an odd
frame count, B-frames) and a frame list for families that see video. A late-interaction model's
probes are what colpali-engine embeds: texts (no instruction, nothing past the window: it cuts
nothing) and page images.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.entries import Entry
from ..core.items import Item
from ..data.corpus import read_folder

#: what a query probe is asked (the kind of instruction GME and Qwen3-VL are trained with)
INSTRUCTION = "Find an image or passage that answers the question."

_WORDS = ("river bridge morning light station garden market window harbour winter bicycle tower "
          "library museum kitchen mountain forest village street painting letter answer question").split()


@dataclass(frozen=True)
class Probe:
    """One input and the kind it stands for (the row of the report it is counted in)."""

    kind: str
    item: Item


def probe_set(workdir: Path, *, sees_images: bool, sees_video: bool = False, late_interaction: bool = False,
              seed: int = 0) -> list[Probe]:
    """The probes for a model; image probes only when it reads pixels, video probes when it sees
    video (and PyAV is installed), a late-interaction model's own set (see the module). Files go
    to ``workdir``."""
    rng = random.Random(seed)
    short = "A red bicycle leaning against a stone wall in the morning light."
    long = long_text(rng, 2500)
    probes = [Probe("text candidate", Item.candidate(text=short, id="text-short"))]
    if not late_interaction:
        probes.append(Probe("text candidate, past the window", Item.candidate(text=long, id="text-long")))
    probes.append(Probe("text query", Item.query(text="where can I park a bicycle?", id="query-plain")))
    if late_interaction:
        probes.append(Probe("text query", Item.query(text="Which page shows the river bridge section?",
                                                     id="query-page")))
    else:
        probes.append(Probe("text query + instruction", Item.query(text="where can I park a bicycle?",
                                                                   instruction=INSTRUCTION, id="query-instructed")))
    if not sees_images:
        return probes
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for mode, (width, height) in [("RGB", (224, 224)), ("RGB", (37, 53)), ("RGB", (301, 29)),
                                  ("RGB", (1400, 1000)), ("RGBA", (96, 80)), ("L", (90, 120)),
                                  ("LA", (64, 64)), ("P", (120, 90)), ("1", (80, 60)), ("CMYK", (100, 70))]:
        path = folder / f"image-{mode}-{width}x{height}.{'jpg' if mode == 'CMYK' else 'png'}"
        _image(mode, width, height, seed=rng.randrange(1 << 30)).save(path)
        probes.append(Probe(f"image {mode}", Item.candidate(image=str(path), id=path.name)))
    photo = str(folder / "image-RGB-224x224.png")
    if not late_interaction:
        probes += [
            Probe("image query + instruction", Item.query(image=photo, instruction=INSTRUCTION, id="image-query")),
            Probe("fused candidate", Item.candidate(text=short, image=photo, id="fused-candidate")),
            Probe("fused query + instruction",
                  Item.query(text="same bicycle in blue?", image=photo, instruction=INSTRUCTION, id="fused-query")),
        ]
    probes.append(Probe("PDF page", _pdf_page(folder / "pdf")))
    if sees_video and importlib.util.find_spec("av") is not None:
        probes += _video_probes(folder / "video", rng)
    return probes


def _video_probes(folder: Path, rng: random.Random) -> list[Probe]:
    """Two short clips (H.264 with B-frames and an odd frame count at an odd size; MJPEG) and a
    list of frames, as candidates and as an instructed query with text."""
    folder.mkdir(parents=True, exist_ok=True)
    h264 = _clip(folder / "clip-h264.mp4", "libx264", 100, 60, rate=10, frames=27, options={"bf": "3", "g": "8"},
                 seed=rng.randrange(1 << 30))
    mjpeg = _clip(folder / "clip-mjpeg.avi", "mjpeg", 96, 72, rate=6, frames=16, options={},
                  seed=rng.randrange(1 << 30), pixel_format="yuvj420p")
    frames = []
    for i in range(5):
        path = folder / f"frame-{i}.png"
        _image("RGB", 90, 70, seed=rng.randrange(1 << 30)).save(path)
        frames.append(str(path))
    return [
        Probe("video candidate", Item.candidate(video=str(h264), id=h264.name)),
        Probe("video candidate", Item.candidate(video=str(mjpeg), id=mjpeg.name)),
        Probe("video query + text + instruction",
              Item.query(text="when does the bar move right?", video=str(h264), instruction=INSTRUCTION,
                         id="video-query")),
        Probe("video frame list", Item.candidate(video=tuple(frames), id="frame-list")),
    ]


def _clip(path: Path, codec: str, width: int, height: int, *, rate: int, frames: int, options: dict, seed: int,
          pixel_format: str = "yuv420p") -> Path:
    """A clip of noisy frames over a ramp that moves (so a frame off by one shows). Needs PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.options = options
        for i in range(frames):
            picture = np.asarray(_image("RGB", width, height, seed=seed + i))
            picture = np.roll(picture, 3 * i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def long_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _image(mode: str, width: int, height: int, *, seed: int) -> Image.Image:
    """Noise over a horizontal ramp (so a resize that is off by a pixel shows), in ``mode``; an
    alpha channel of its own noise, a palette image with a transparent colour."""
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)
    pixels[..., 0] = pixels[..., 0] // 4 + ramp * 3 // 4
    image = Image.fromarray(pixels, "RGB")
    if mode in ("RGBA", "LA"):
        image = image.convert(mode)
        image.putalpha(Image.fromarray(rng.randint(0, 256, (height, width), dtype=np.uint8), "L"))
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        image.info["transparency"] = 0
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def _pdf_page(folder: Path) -> Item:
    """A one-page PDF (a scanned-looking page of lines and text) read back as ``umr index`` reads
    it, so the probe is the page image the index embeds."""
    folder.mkdir(parents=True, exist_ok=True)
    page = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(page)
    for row in range(12):
        y = 80 + row * 80
        draw.text((70, y), f"Section {row + 1}: notes on the river bridge and the morning market", fill="black")
        draw.line((70, y + 30, 780 - row * 20, y + 30), fill=(40, 40, 160), width=3)
    page.save(folder / "page.pdf", resolution=100.0)
    entries = [entry for entry in read_folder(folder) if isinstance(entry, Entry)]
    if len(entries) != 1:
        raise RuntimeError("the generated PDF probe did not read back as one page")
    item = entries[0].load()
    return Item.candidate(text=item.text, image=item.image, id="page.pdf#page=1")
