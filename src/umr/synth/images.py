"""Where an entity's images come from, and the CLIP-style check that they show it.

An :class:`ImageSource` proposes candidate images for an entity; the pipeline keeps a candidate
only if :class:`ClipScorer` scores it against the entity's caption at or above a threshold
(GME: 0.2 with CLIP). Sources: the passage's own image (:class:`OwnImages`), a user's image
collection searched by the entity's name (:class:`ImageCollection`, the same index machinery
as ``umr index``), or any text-to-image pipeline (:class:`TextToImage`).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ..core.atomic import write_bytes_atomic
from ..core.items import Item
from ..index import Index
from ..models.base import Embedder


@dataclass(frozen=True)
class Candidate:
    """A proposed image: a file path, and where it came from (``own``, ``collection``, ``generated``)."""

    path: str
    origin: str


@runtime_checkable
class ImageSource(Protocol):
    """Proposes images for an entity; ``name`` goes into the cache key, so another source is other work."""

    name: str

    def candidates(self, entity: str, passage: Item) -> list[Candidate]: ...


class OwnImages:
    """The passage's own image (an image with a caption, a PDF page). An image held in memory (a
    rendered page) is saved under ``folder`` by content, so the training JSONL can name a file."""

    name = "own"

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else None

    def candidates(self, entity: str, passage: Item) -> list[Candidate]:
        image = passage.image
        if isinstance(image, (str, os.PathLike)):
            return [Candidate(str(image), "own")]
        if image is None or self.folder is None:
            return []
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        data = io.BytesIO()
        image.convert("RGB").save(data, format="PNG")
        path = self.folder / f"{hashlib.sha256(data.getvalue()).hexdigest()[:24]}.png"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data.getvalue())
        return [Candidate(str(path), "own")]


class ImageCollection:
    """The ``top`` images of a user's collection nearest to the entity's name, under a CLIP-style
    embedder; the collection is indexed once into ``index_folder`` (resumable, like ``umr index``)."""

    def __init__(self, folder: str | os.PathLike, embedder, index_folder: str | os.PathLike, *, top: int = 3):
        self.folder = Path(folder).resolve()
        self.top = top
        self.embedder = embedder
        self.name = f"collection:{self.folder}:{top}"
        index_folder = Path(index_folder)
        if Index.exists(index_folder):
            self.index = Index.open(index_folder, model=embedder, writable=True)
        else:
            self.index = Index.create(index_folder, embedder)
        self.index.index_corpus(self.folder, id_prefix="")

    def candidates(self, entity: str, passage: Item) -> list[Candidate]:
        vector = self.embedder.encode_queries([entity], show_progress_bar=False)
        hits = self.index.search_vectors(vector, k=self.top, modality=["image", "image,text"])[0]
        return [Candidate(hit.path, "collection") for hit in hits if hit.path]


class TextToImage:
    """Images drawn by a user's text-to-image pipeline (``pipeline(prompt) -> PIL image``), saved
    under ``folder`` by content key so a rerun does not draw them again."""

    def __init__(self, pipeline: Callable[[str], Image.Image], folder: str | os.PathLike, *,
                 name: str = "text-to-image", prompt: str = "a photo of {entity}"):
        self.pipeline = pipeline
        self.folder = Path(folder)
        self.prompt = prompt
        self.name = f"{name}:{prompt}"

    def candidates(self, entity: str, passage: Item) -> list[Candidate]:
        text = self.prompt.format(entity=entity)
        path = self.folder / f"{hashlib.sha256(f'{self.name}|{text}'.encode()).hexdigest()[:24]}.png"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            image = self.pipeline(text).convert("RGB")
            write_bytes_atomic(path, lambda handle: image.save(handle, format="PNG"))
        return [Candidate(str(path), "generated")]


class ClipScorer:
    """Cosine similarity of an image and a caption under a CLIP-style umr embedder (e.g. ``clip-sf``)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.name = embedder.identity.key() if embedder.identity is not None else embedder.name

    def scores(self, caption: str, images: Sequence[str]) -> list[float | None]:
        """One score per image; None for an image that cannot be read or embedded."""
        text = self.embedder.encode_candidates([caption], show_progress_bar=False)[0]
        items = [Item.candidate(image=path, id=str(i)) for i, path in enumerate(images)]
        result = self.embedder.embed(items, show_progress_bar=False, on_error="skip")
        scores: list[float | None] = [None] * len(images)
        for position, vector in zip(result.indices.tolist(), result.vectors):
            scores[position] = float(np.dot(text, vector))
        return scores
