"""The probe set ``umr verify`` embeds both ways: each kind of input a model meets in use.

The probes are generated (seeded), so two runs and two machines compare the same inputs. They
cover what implementations of one model most often disagree on: the prompt (queries with and
without an instruction, candidates), truncation (a text longer than the model's window), image
decoding (every 8-bit PIL mode, alpha, odd and large sizes) and fused text + image items, plus a
PDF page rendered the way ``umr index`` renders one.
"""

from __future__ import annotations

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


def probe_set(workdir: Path, *, sees_images: bool, seed: int = 0) -> list[Probe]:
    """The probes for a model; image probes only when it reads pixels. Files go to ``workdir``."""
    rng = random.Random(seed)
    short = "A red bicycle leaning against a stone wall in the morning light."
    probes = [
        Probe("text candidate", Item.candidate(text=short, id="text-short")),
        Probe("text candidate, past the window", Item.candidate(text=long_text(rng, 2500), id="text-long")),
        Probe("text query", Item.query(text="where can I park a bicycle?", id="query-plain")),
        Probe("text query + instruction",
              Item.query(text="where can I park a bicycle?", instruction=INSTRUCTION, id="query-instructed")),
    ]
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
    probes += [
        Probe("image query + instruction", Item.query(image=photo, instruction=INSTRUCTION, id="image-query")),
        Probe("fused candidate", Item.candidate(text=short, image=photo, id="fused-candidate")),
        Probe("fused query + instruction",
              Item.query(text="same bicycle in blue?", image=photo, instruction=INSTRUCTION, id="fused-query")),
        Probe("PDF page", _pdf_page(folder / "pdf")),
    ]
    return probes


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
